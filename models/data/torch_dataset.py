"""Training sequences for PyTorch: T consecutive frames, their CQT windows and keypoints.

:class:`PerformanceDataset` works on any list of :class:`ClipSource` (a letsplay dataset,
synthetic or prepared from videos, or a Sub-URMP tree; see :func:`open_sources`). Item
``i`` is a fixed (clip, start frame) window, so the dataset is deterministic; with
``random_offset`` each epoch shifts every window by a seeded amount inside its stride
(:meth:`PerformanceDataset.set_epoch`), still reproducible from (seed, epoch, index).

Audio features come from :class:`letsplay.models.features.CQT` and
:func:`letsplay.models.features.frame_windows` -- the same code the live engine runs -- so
frame ``i`` gets the ``window_columns`` columns ending at its time. Each clip's whole CQT
is computed once and cached (in memory, and on disk under ``cache_dir`` when given,
keyed by the audio file and the AudioSpec).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from letsplay.models.data.readers import ClipSource, open_dataset, open_sub_urmp
from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)


def open_sources(path: Path | str, split: str | None = None, instrument: str | None = None,
                 openpose_root: Path | str | None = None) -> list[ClipSource]:
    """Clips from a letsplay dataset folder (has ``manifest.json``) or a Sub-URMP tree (has
    ``img/`` and ``chunk/``)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        clips: list[ClipSource] = list(open_dataset(path, split))
        return [c for c in clips if instrument is None or c.instrument == instrument]
    if (path / "img").is_dir() and (path / "chunk").is_dir():
        return list(open_sub_urmp(path, instrument, split, openpose_root))
    raise ValueError(f"{path} is neither a letsplay dataset (manifest.json) nor a Sub-URMP tree (img/, chunk/); "
                     f"make a dataset with 'letsplay data synth' or 'letsplay data prepare'")


@functools.lru_cache(maxsize=4)
def _cqt_module(spec: AudioSpec) -> Any:
    """One CQT per AudioSpec and process (building the kernels takes a while)."""
    from letsplay.models.features import CQT

    return CQT(spec)


def _fit_frames(frames: np.ndarray, kp: np.ndarray, conf: np.ndarray, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-crop to the target aspect and resize; keypoints follow the crop."""
    T, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames, kp, conf
    import cv2

    target = width / height
    if w / h > target:  # too wide
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = np.stack([cv2.resize(f[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
                    for f in frames])
    kp2 = (kp * np.array([w, h]) - np.array([x0, y0])) / np.array([cw, ch])
    conf2 = conf.copy()
    conf2[((kp2 < 0) | (kp2 > 1)).any(axis=-1)] = 0.0
    kp2 = np.where(conf2[..., None] > 0, kp2, 0.0)
    return out, kp2.astype(np.float32), conf2


class PerformanceDataset(Dataset):
    """Windows of ``seq_len`` consecutive frames from clips.

    Each item is a dict:

    * ``frames``: float32 [T, 3, H, W] in [-1, 1] (RGB); absent with ``with_frames = False``
    * ``cqt``: float32 [T, n_bins, window_columns], frame t's audio window
    * ``keypoints``: float32 [T, 67, 2] normalised (x, y); ``confidence``: float32 [T, 67]
    * ``clip``: clip id, ``start``: first frame index, ``instrument``: name
    """

    def __init__(self, clips: Sequence[ClipSource], seq_len: int, audio_spec: AudioSpec | None = None,
                 video_spec: VideoSpec | None = None, stride: int | None = None,
                 cache_dir: Path | str | None = None, seed: int = 0, random_offset: bool = False) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.clips = list(clips)
        self.seq_len = seq_len
        self.audio_spec = audio_spec or AudioSpec()
        self.video_spec = video_spec or VideoSpec()
        self.stride = stride or seq_len
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = seed
        self.random_offset = random_offset
        self.epoch = 0
        self.with_frames = True  # False: items carry no "frames" (keypoint training needs none)
        self.index: list[tuple[int, int]] = []
        for ci, c in enumerate(self.clips):
            for s in range(0, c.n_frames - seq_len + 1, self.stride):
                self.index.append((ci, s))
        if not self.index:
            raise ValueError(f"no clip has {seq_len} frames; use a shorter seq_len")
        self._cqt_mod: Any = None
        self._cqts: dict[int, torch.Tensor] = {}
        self._kps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._first: dict[int, np.ndarray] = {}  # frame 0 of each clip (its size, without frames)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose seeded window offsets ``random_offset`` uses."""
        self.epoch = int(epoch)

    def _video_for(self, clip: ClipSource) -> VideoSpec:
        v = self.video_spec
        return VideoSpec(fps=float(clip.fps), height=v.height, width=v.width, lookahead_ms=v.lookahead_ms)

    # ---- CQT per clip, cached
    def clip_cqt(self, ci: int) -> torch.Tensor:
        """The whole clip's CQT, [n_bins, n_columns] float32."""
        if ci in self._cqts:
            return self._cqts[ci]
        clip = self.clips[ci]
        path = None
        if self.cache_dir is not None:
            key = hashlib.sha1(f"{clip.cache_key}|{self.audio_spec.to_json()}".encode()).hexdigest()[:20]
            path = self.cache_dir / f"cqt-{key}.npy"
            if path.is_file():
                t = torch.from_numpy(np.load(path))
                self._cqts[ci] = t
                return t
        from letsplay.models.features import frame_column

        if self._cqt_mod is None:
            self._cqt_mod = _cqt_module(self.audio_spec)
        audio = clip.audio(self.audio_spec)
        v = self._video_for(clip)
        last_col = frame_column(clip.n_frames - 1, self.audio_spec, v)
        need = last_col * self.audio_spec.hop + self._cqt_mod.ahead + 1  # samples for the last frame's column
        if len(audio) < need:  # audio after the clip's end is silence
            audio = np.concatenate([audio, np.zeros(need - len(audio), np.float32)])
        with torch.no_grad():
            cqt = self._cqt_mod(torch.from_numpy(np.ascontiguousarray(audio)))  # [n_bins, n_columns]
        cqt = cqt.float().contiguous()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{np.random.randint(1 << 30)}.npy")
            np.save(tmp, cqt.numpy())
            tmp.replace(path)
        self._cqts[ci] = cqt
        return cqt

    def _keypoints(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        if ci not in self._kps:
            self._kps[ci] = self.clips[ci].keypoints()
        return self._kps[ci]

    def _first_frame(self, ci: int) -> np.ndarray:
        if ci not in self._first:
            self._first[ci] = self.clips[ci].frames(0, 1)
        return self._first[ci]

    def window_start(self, i: int) -> tuple[int, int]:
        """(clip index, first frame) of item i for the current epoch."""
        ci, s = self.index[i]
        if self.random_offset:
            room = min(self.stride, self.clips[ci].n_frames - self.seq_len - s + 1)
            if room > 1:
                rng = np.random.default_rng([self.seed, self.epoch, i])
                s += int(rng.integers(room))
        return ci, s

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(*self.window_start(i))

    def item(self, ci: int, s: int, T: int | None = None) -> dict[str, Any]:
        """The ``T`` frames (default ``seq_len``) of clip ``ci`` from frame ``s``."""
        from letsplay.models.features import frame_windows

        clip = self.clips[ci]
        T = self.seq_len if T is None else T
        # without frames, the crop needs only the clip's frame size (one frame read per clip)
        frames = clip.frames(s, T) if self.with_frames else self._first_frame(ci)
        kp_all, conf_all = self._keypoints(ci)
        kp, conf = kp_all[s:s + T], conf_all[s:s + T]
        frames, kp, conf = _fit_frames(frames, kp, conf, self.video_spec.height, self.video_spec.width)
        cqt = frame_windows(self.clip_cqt(ci), self.audio_spec, self._video_for(clip), range(s, s + T))
        item: dict[str, Any] = {
            "cqt": cqt.float(), "keypoints": torch.from_numpy(np.asarray(kp, np.float32)),
            "confidence": torch.from_numpy(np.asarray(conf, np.float32)), "clip": clip.id, "start": s,
            "instrument": clip.instrument,
        }
        if self.with_frames:
            item["frames"] = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return item

    def total_seconds(self) -> float:
        return float(sum(c.n_frames / c.fps for c in self.clips))

    def __repr__(self) -> str:
        return (f"PerformanceDataset({len(self.clips)} clips, {len(self)} windows of {self.seq_len} frames, "
                f"{self.total_seconds() / 60:.1f} min)")


def seconds_to_frames(seconds: float, fps: float) -> int:
    return int(math.floor(seconds * fps + 1e-9))
