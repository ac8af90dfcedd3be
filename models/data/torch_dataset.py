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

Dataset format 2 adds the instrument's own points (every item carries them; zeros with
confidence 0 where a clip has none: format 1, clips prepared from video, Sub-URMP) and
the renderer's part-label maps (on request, ``with_parts``).
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

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.readers import ClipSource, open_dataset, open_sub_urmp
from letsplay.models.skeleton import instrument_point_names
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


PARTS_UNKNOWN = 255  # the ``parts`` value of pixels whose label is not known (a clip without part maps)


def _crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, crop width, crop height): the centred crop of an h x w frame with the target aspect."""
    target = width / height
    if w / h > target:  # too wide
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _fit_points(kp: np.ndarray, conf: np.ndarray, h: int, w: int, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (normalised to an h x w frame) after the centre crop to height x width; points
    that leave the crop get confidence 0 and coordinates 0."""
    if (h, w) == (height, width):
        return kp, conf
    x0, y0, cw, ch = _crop_box(h, w, height, width)
    kp2 = (kp * np.array([w, h]) - np.array([x0, y0])) / np.array([cw, ch])
    conf2 = conf.copy()
    conf2[((kp2 < 0) | (kp2 > 1)).any(axis=-1)] = 0.0
    kp2 = np.where(conf2[..., None] > 0, kp2, 0.0)
    return kp2.astype(np.float32), conf2


def _fit_frames(frames: np.ndarray, kp: np.ndarray, conf: np.ndarray, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-crop to the target aspect and resize; keypoints follow the crop."""
    T, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames, kp, conf
    import cv2

    x0, y0, cw, ch = _crop_box(h, w, height, width)
    out = np.stack([cv2.resize(f[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
                    for f in frames])
    kp2, conf2 = _fit_points(kp, conf, h, w, height, width)
    return out, kp2, conf2


def _fit_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Part-label maps [T, h, w] cropped like the frames and resized by nearest neighbour."""
    T, h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    import cv2

    x0, y0, cw, ch = _crop_box(h, w, height, width)
    return np.stack([cv2.resize(m[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_NEAREST)
                     for m in labels])


def clip_instrument_points(clip: ClipSource) -> fmt.InstrumentPoints | None:
    """A clip's instrument points (format 2 letsplay clips), or None when it has none."""
    files = getattr(clip, "files", None)
    if isinstance(files, fmt.ClipFiles) and files.keypoints.is_file():
        return fmt.read_instrument_points(files.keypoints)
    return None


def clip_parts(clip: ClipSource) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """A clip's part-label maps (labels [T, H, W] uint8, label names), or None when it has
    none (format 1, clips prepared from video, Sub-URMP)."""
    files = getattr(clip, "files", None)
    if isinstance(files, fmt.ClipFiles) and files.parts.is_file():
        return fmt.read_parts(files.parts)
    return None


class PerformanceDataset(Dataset):
    """Windows of ``seq_len`` consecutive frames from clips.

    Each item is a dict:

    * ``frames``: float32 [T, 3, H, W] in [-1, 1] (RGB); absent with ``with_frames = False``
    * ``cqt``: float32 [T, n_bins, window_columns], frame t's audio window
    * ``keypoints``: float32 [T, 67, 2] normalised (x, y); ``confidence``: float32 [T, 67]
    * ``instrument_points``: float32 [T, K, 2] the instrument's points
      (``skeleton.instrument_point_names``, K = 0 for an instrument without a layout);
      ``instrument_confidence``: float32 [T, K], 0 where a point is unknown (a clip without
      instrument points) or outside the frame
    * ``parts``: uint8 [T, H, W] part-label ids (``performer_render.PART_LABELS``), only
      with ``with_parts = True``; :data:`PARTS_UNKNOWN` everywhere for a clip without maps
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
        self.with_parts = False  # True: items carry "parts", the part-label maps (format-2 clips)
        self.with_motion = False  # True: items carry "motion" / "motion_mask", KHP's motion targets
        # with_motion: items carry "pitch" too, the note begun this long after each frame's display
        # time (None: the lookahead, the newest audio the frame hears)
        self.pitch_lead_ms: float | None = None
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
        self._inst: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._parts: dict[int, np.ndarray | None] = {}  # the last clip's maps only (they are large)
        self._motion: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pitch: dict[int, np.ndarray] = {}

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
        from letsplay.models.features import frame_column

        clip = self.clips[ci]
        v = self._video_for(clip)
        last_col = frame_column(clip.n_frames - 1, self.audio_spec, v)  # a lookahead reads past the clip's end
        packed = clip.packed_cqt(self.audio_spec)
        if packed is not None and packed.shape[-1] > last_col:  # a packed clip carries its CQT
            self._cqts[ci] = torch.from_numpy(packed)
            return self._cqts[ci]
        path = None
        if self.cache_dir is not None:
            key = hashlib.sha1(f"{clip.cache_key}|{self.audio_spec.to_json()}".encode()).hexdigest()[:20]
            path = self.cache_dir / f"cqt-{key}.npy"
            if path.is_file():
                t = torch.from_numpy(np.load(path))
                if t.shape[-1] > last_col:  # long enough (one made for a shorter lookahead is not)
                    self._cqts[ci] = t
                    return t
        if self._cqt_mod is None:
            self._cqt_mod = _cqt_module(self.audio_spec)
        audio = clip.audio(self.audio_spec)
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

    def _instrument_points(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """(points [T, K, 2], confidence [T, K]) in the order of the clip instrument's point
        names; zeros with confidence 0 for points the clip does not have."""
        if ci not in self._inst:
            clip = self.clips[ci]
            names = instrument_point_names(clip.instrument)
            pts = np.zeros((clip.n_frames, len(names), 2), np.float32)
            conf = np.zeros((clip.n_frames, len(names)), np.float32)
            got = clip_instrument_points(clip) if names else None
            if got is not None:
                n = min(clip.n_frames, len(got.points))
                for k, name in enumerate(names):
                    if name in got.names:
                        j = got.names.index(name)
                        pts[:n, k], conf[:n, k] = got.points[:n, j], got.confidence[:n, j]
            self._inst[ci] = (pts, conf)
        return self._inst[ci]

    def _motion_targets(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """(values [T, 6], mask [T, 6]): :func:`letsplay.models.motion_targets.motion_targets`
        from the clip's notes and physics, where it has them."""
        if ci not in self._motion:
            from letsplay.models.motion_targets import motion_targets

            clip = self.clips[ci]
            notes, motion = self._notes(ci), None
            try:
                motion = clip.motion()
            except (AttributeError, OSError, ValueError, KeyError):
                motion = None
            self._motion[ci] = motion_targets(clip.instrument, notes, motion, clip.n_frames, float(clip.fps))
        return self._motion[ci]

    def _notes(self, ci: int) -> list | None:
        """The clip's notes, or None for a clip without them (a prepared video)."""
        try:
            return self.clips[ci].notes()
        except (AttributeError, OSError, ValueError, KeyError):
            return None

    def _pitch_targets(self, ci: int) -> np.ndarray:
        """[T] int64: the pitch detector's targets (:func:`letsplay.models.fingering.heard_pitch`),
        all -1 for a clip without notes."""
        if ci not in self._pitch:
            from letsplay.models.fingering import heard_pitch, pitch_classes

            clip = self.clips[ci]
            low, n = pitch_classes(clip.instrument)
            v = self._video_for(clip)
            lead = v.lookahead_ms if self.pitch_lead_ms is None else min(self.pitch_lead_ms, v.lookahead_ms)
            self._pitch[ci] = heard_pitch(self._notes(ci), clip.n_frames, float(clip.fps), lead / 1000.0, low, n)
        return self._pitch[ci]

    def _part_maps(self, ci: int) -> np.ndarray | None:
        if ci not in self._parts:
            self._parts.clear()
            got = clip_parts(self.clips[ci])
            self._parts[ci] = None if got is None else got[0]
        return self._parts[ci]

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
        h, w = frames.shape[1:3]
        frames, kp, conf = _fit_frames(frames, kp, conf, self.video_spec.height, self.video_spec.width)
        ip_all, ic_all = self._instrument_points(ci)
        ip, ic = _fit_points(ip_all[s:s + T], ic_all[s:s + T], h, w, self.video_spec.height, self.video_spec.width)
        cqt = frame_windows(self.clip_cqt(ci), self.audio_spec, self._video_for(clip), range(s, s + T))
        item: dict[str, Any] = {
            "cqt": cqt.float(), "keypoints": torch.from_numpy(np.asarray(kp, np.float32)),
            "confidence": torch.from_numpy(np.asarray(conf, np.float32)), "clip": clip.id, "start": s,
            "instrument": clip.instrument,
            "instrument_points": torch.from_numpy(np.ascontiguousarray(ip, np.float32)),
            "instrument_confidence": torch.from_numpy(np.ascontiguousarray(ic, np.float32)),
        }
        if self.with_motion:
            mv, mm = self._motion_targets(ci)
            item["motion"] = torch.from_numpy(np.ascontiguousarray(mv[s:s + T]))
            item["motion_mask"] = torch.from_numpy(np.ascontiguousarray(mm[s:s + T]))
            item["pitch"] = torch.from_numpy(self._pitch_targets(ci)[s:s + T])
        if self.with_parts:
            maps = self._part_maps(ci)
            if maps is None or len(maps) < s + T:
                labels = np.full((T, self.video_spec.height, self.video_spec.width), PARTS_UNKNOWN, np.uint8)
            else:
                labels = _fit_labels(maps[s:s + T], self.video_spec.height, self.video_spec.width)
            item["parts"] = torch.from_numpy(np.ascontiguousarray(labels))
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
