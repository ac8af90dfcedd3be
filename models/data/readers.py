"""Readers for performance data: letsplay datasets, Sub-URMP trees and OpenPose JSON.

Every source becomes a list of :class:`ClipSource`: consecutive frames at a fixed
rate, the audio under them, and 67-point keypoints (normalised to the frame, with a
confidence per point; points a source does not have get confidence 0).

* :func:`open_dataset` -- a folder in the letsplay dataset format (synthetic or prepared).
* :func:`open_sub_urmp` -- a Sub-URMP-style tree: ``img/<split>/<instrument>/<rec>_<k>.jpg``
  paired by name with ``chunk/<split>/<instrument>/<rec>_<k>.wav``; image ``k`` of a
  recording shows the start of chunk ``k``; the chunks of a recording, concatenated,
  are its audio, and the frame rate is one image per chunk. Keypoints, when an OpenPose
  tree with the same layout is given (``<rec>_<k>_keypoints.json``), else confidence 0.
* :func:`read_openpose_frame` / :func:`read_openpose_folder` -- OpenPose JSON, BODY_25 or
  COCO-18 (mapped into BODY_25 order; the mid-hip is the mean of the hips, the feet are
  missing), plus both hands.

Plain videos become a letsplay dataset first (:mod:`letsplay.models.data.prepare`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.data import dataset_format as fmt
from letsplay.models.skeleton import LEFT_HAND, N_BODY, N_KEYPOINTS, RIGHT_HAND
from letsplay.models.spec import AudioSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the clip interface


class ClipSource:
    """One clip of consecutive frames with its audio and keypoints."""

    id: str
    instrument: str
    split: str
    fps: float
    n_frames: int

    @property
    def cache_key(self) -> str:
        """Identifies the clip's audio for feature caches (changes when the audio changes)."""
        raise NotImplementedError

    def frames(self, start: int, count: int) -> np.ndarray:
        """RGB uint8 [count, H, W, 3] at the source's own size."""
        raise NotImplementedError

    def audio(self, spec: AudioSpec) -> np.ndarray:
        """Mono float32 at ``spec.sample_rate``; sample 0 is the time of frame 0."""
        raise NotImplementedError

    def keypoints(self) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints [T, 67, 2] normalised to the frame, confidence [T, 67])."""
        raise NotImplementedError

    def packed_cqt(self, spec: AudioSpec) -> np.ndarray | None:
        """The clip's CQT for ``spec`` stored in place of its audio, or None (computed from
        the audio); see :meth:`DatasetClip.packed_cqt`."""
        return None


def _file_key(*paths: Path) -> str:
    parts = []
    for p in paths:
        st = Path(p).stat()
        parts.append(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


# --------------------------------------------------------------------------- letsplay datasets


@dataclass
class DatasetClip(ClipSource):
    """A complete clip of a letsplay-format dataset."""

    root: Path
    meta: dict[str, Any]
    _reader: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.files = fmt.ClipFiles(fmt.clip_dir(self.root, self.meta["id"]))
        self.id = str(self.meta["id"])
        self.instrument = str(self.meta["instrument"])
        self.split = str(self.meta["split"])
        self.fps = float(self.meta["video_spec"]["fps"])
        self.n_frames = int(self.meta["n_frames"])

    @property
    def cache_key(self) -> str:
        if not self.files.audio.is_file() and self.meta.get("packed_cqt"):
            return f"packed:{self.id}:{self.meta['packed_cqt'].get('sha1', '')}"
        return _file_key(self.files.audio)

    def packed_cqt(self, spec: AudioSpec) -> np.ndarray | None:
        """A packed clip's CQT for ``spec`` ([n_bins, n_columns] float32), or None: the clip
        is not packed, or was packed for another audio spec (its audio is then needed)."""
        p = self.meta.get("packed_cqt")
        if not p or p.get("audio_spec") != json.loads(spec.to_json()) or not self.files.cqt.is_file():
            return None
        return np.load(self.files.cqt).astype(np.float32)

    def frames(self, start: int, count: int) -> np.ndarray:
        if start < 0 or start + count > self.n_frames:
            raise IndexError(f"clip {self.id}: frames {start}..{start + count - 1} outside 0..{self.n_frames - 1}")
        if self.meta.get("frames", "mp4") == "jpeg":
            import cv2

            out = []
            for i in range(start, start + count):
                bgr = cv2.imread(str(self.files.frames_dir / f"{i:06d}.jpg"), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise fmt.DatasetError(f"clip {self.id}: frame {i} is missing or unreadable")
                out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            return np.stack(out)
        if start + count > 1 and (self.meta.get("packed_cqt") or {}).get("video") == "first frame":
            raise fmt.DatasetError(f"clip {self.id} was packed for keypoint training: it holds its first video "
                                   f"frame only. Pack it without --keypoints-only to train the frame stages")
        if self._reader is None:
            self._reader = fmt.VideoReader(self.files.video)
        return self._reader.frames(start, count)

    def audio(self, spec: AudioSpec) -> np.ndarray:
        if not self.files.audio.is_file() and self.meta.get("packed_cqt"):
            raise fmt.DatasetError(f"clip {self.id} was packed for training without its audio, and its packed "
                                   f"CQT does not fit the audio spec asked for; pack it again for that spec "
                                   f"(scripts/pack_training_data.py) or use the original dataset")
        return fmt.read_audio(self.files.audio, spec)

    def keypoints(self) -> tuple[np.ndarray, np.ndarray]:
        _, kp, conf = fmt.read_keypoints(self.files.keypoints)
        return kp, conf

    def notes(self) -> list[tuple[float, float, int, int]]:
        """The notes played (synthetic clips only)."""
        return [tuple(n) for n in fmt.read_json(self.files.notes)["notes"]]  # type: ignore[misc]

    def motion(self) -> dict[str, np.ndarray]:
        """The synthetic performer's physics per frame (synthetic clips only)."""
        with np.load(self.files.motion) as z:
            return {k: z[k] for k in z.files}


def open_dataset(root: Path | str, split: str | None = None) -> list[DatasetClip]:
    """The complete clips of a letsplay dataset, optionally of one split."""
    root = Path(root)
    m = fmt.load_manifest(root)
    out = []
    missing = 0
    for c in m["clips"]:
        if split is not None and c["split"] != split:
            continue
        if not fmt.clip_complete(root, c["id"]):
            missing += 1
            continue
        out.append(DatasetClip(root, fmt.read_json(fmt.clip_dir(root, c["id"]) / fmt.CLIP_MANIFEST)))
    if missing:
        log.warning("%s: %d planned clip(s) are not written yet (an unfinished run?)", root, missing)
    return out


# --------------------------------------------------------------------------- OpenPose JSON

# COCO-18 (OpenPose's COCO model) index -> BODY_25 index. BODY_25's mid-hip (8) is the
# mean of the two hips; its feet (19-24) do not exist in COCO-18.
COCO18_TO_BODY25: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def _person_arrays(person: dict[str, Any], width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    kp = np.zeros((N_KEYPOINTS, 2), np.float32)
    conf = np.zeros(N_KEYPOINTS, np.float32)
    body = np.asarray(person.get("pose_keypoints_2d") or [], np.float32).reshape(-1, 3)
    if len(body) == 25:
        kp[:25], conf[:25] = body[:, :2], body[:, 2]
    elif len(body) == 18:
        idx = list(COCO18_TO_BODY25)
        kp[idx], conf[idx] = body[:, :2], body[:, 2]
        rh, lh = body[8], body[11]
        if rh[2] > 0 and lh[2] > 0:
            kp[8] = 0.5 * (rh[:2] + lh[:2])
            conf[8] = min(rh[2], lh[2])
    elif len(body):
        raise fmt.DatasetError(f"OpenPose pose_keypoints_2d has {len(body)} points; expected 25 (BODY_25) "
                               f"or 18 (COCO)")
    for key, rng in (("hand_left_keypoints_2d", LEFT_HAND), ("hand_right_keypoints_2d", RIGHT_HAND)):
        h = np.asarray(person.get(key) or [], np.float32).reshape(-1, 3)
        if len(h) == 21:
            kp[rng.start:rng.stop], conf[rng.start:rng.stop] = h[:, :2], h[:, 2]
    conf[(kp[:, 0] == 0) & (kp[:, 1] == 0)] = 0.0  # OpenPose writes (0, 0, 0) for a missing point
    kp = kp / np.array([width, height], np.float32)
    kp[conf <= 0] = 0.0
    return kp, np.clip(conf, 0.0, 1.0)


def read_openpose_frame(data: dict[str, Any] | Path | str, width: float, height: float,
                        near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One OpenPose JSON frame -> (keypoints [67, 2] normalised by width/height, conf [67]).

    With several people: the one whose neck is nearest ``near`` (a previous neck,
    normalised), else the one with the largest total body confidence."""
    if not isinstance(data, dict):
        data = fmt.read_json(Path(data))
    people = data.get("people") or []
    if not people:
        return np.zeros((N_KEYPOINTS, 2), np.float32), np.zeros(N_KEYPOINTS, np.float32)
    cands = [_person_arrays(p, width, height) for p in people]
    if near is not None and len(cands) > 1:
        def dist(c: tuple[np.ndarray, np.ndarray]) -> float:
            return float(np.linalg.norm(c[0][1] - near)) if c[1][1] > 0 else np.inf
        best = min(cands, key=dist)
        if np.isfinite(dist(best)):
            return best
    return max(cands, key=lambda c: float(c[1][:N_BODY].sum()))


_OPENPOSE_INDEX = re.compile(r"(\d+)(?:_keypoints)?\.json$")


def read_openpose_folder(folder: Path | str, width: float, height: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All ``*.json`` frames of an OpenPose output folder, in frame order (the number before
    ``_keypoints.json``). Returns (keypoints [T, 67, 2], confidence [T, 67], file names)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"), key=lambda p: (int(m.group(1)) if (m := _OPENPOSE_INDEX.search(p.name))
                                                          else -1, p.name))
    if not files:
        raise fmt.DatasetError(f"{folder} holds no OpenPose *.json files")
    kps, confs = [], []
    near = None
    for f in files:
        kp, conf = read_openpose_frame(f, width, height, near)
        if conf[1] > 0:
            near = kp[1]
        kps.append(kp)
        confs.append(conf)
    return np.stack(kps), np.stack(confs), [f.name for f in files]


# --------------------------------------------------------------------------- Sub-URMP


_NAME = re.compile(r"^(?P<rec>.+)_(?P<k>\d+)$")


@dataclass
class SubURMPClip(ClipSource):
    """A run of consecutive Sub-URMP images of one recording and their audio chunks."""

    id: str
    instrument: str
    split: str
    images: list[Path]
    chunks: list[Path]
    chunk_seconds: float
    openpose: list[Path | None] | None = None

    def __post_init__(self) -> None:
        self.fps = 1.0 / self.chunk_seconds
        self.n_frames = len(self.images)

    @property
    def cache_key(self) -> str:
        return _file_key(self.chunks[0], self.chunks[-1]) + f"|{len(self.chunks)}"

    def frames(self, start: int, count: int) -> np.ndarray:
        import cv2

        out = []
        for p in self.images[start:start + count]:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise fmt.DatasetError(f"{p} is missing or not an image")
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len(out) != count:
            raise IndexError(f"clip {self.id}: frames {start}..{start + count - 1} outside 0..{self.n_frames - 1}")
        return np.stack(out)

    def audio(self, spec: AudioSpec) -> np.ndarray:
        return np.concatenate([fmt.read_audio(p, spec) for p in self.chunks])

    def keypoints(self) -> tuple[np.ndarray, np.ndarray]:
        kp = np.zeros((self.n_frames, N_KEYPOINTS, 2), np.float32)
        conf = np.zeros((self.n_frames, N_KEYPOINTS), np.float32)
        if self.openpose:
            import cv2

            h, w = cv2.imread(str(self.images[0]), cv2.IMREAD_COLOR).shape[:2]
            near = None
            for i, p in enumerate(self.openpose):
                if p is not None and p.is_file():
                    kp[i], conf[i] = read_openpose_frame(p, w, h, near)
                    if conf[i, 1] > 0:
                        near = kp[i, 1]
        return kp, conf


def open_sub_urmp(root: Path | str, instrument: str | None = None, split: str | None = None,
                  openpose_root: Path | str | None = None) -> list[SubURMPClip]:
    """The clips of a Sub-URMP-style tree (module docstring); one clip per run of
    consecutive image numbers of a recording."""
    import soundfile as sf

    root = Path(root)
    img_root, chunk_root = root / "img", root / "chunk"
    if not img_root.is_dir() or not chunk_root.is_dir():
        raise fmt.DatasetError(f"{root} is not a Sub-URMP tree: expected img/<split>/<instrument>/*.jpg "
                               f"and chunk/<split>/<instrument>/*.wav")
    clips: list[SubURMPClip] = []
    for split_dir in sorted(p for p in img_root.iterdir() if p.is_dir()):
        if split is not None and split_dir.name != split:
            continue
        for inst_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if instrument is not None and inst_dir.name != instrument:
                continue
            recs: dict[str, dict[int, Path]] = {}
            for img in inst_dir.iterdir():
                if img.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                m = _NAME.match(img.stem)
                if m:
                    recs.setdefault(m["rec"], {})[int(m["k"])] = img
            for rec, frames in sorted(recs.items()):
                ks = sorted(frames)
                runs: list[list[int]] = [[ks[0]]]
                for k in ks[1:]:
                    (runs[-1].append(k) if k == runs[-1][-1] + 1 else runs.append([k]))
                for run in runs:
                    chunks = [chunk_root / split_dir.name / inst_dir.name / f"{frames[k].stem}.wav" for k in run]
                    have = [c.is_file() for c in chunks]
                    if not all(have):
                        log.warning("%s/%s: %d image(s) without their audio chunk; skipping those runs",
                                    inst_dir, rec, have.count(False))
                        continue
                    info = sf.info(str(chunks[0]))
                    chunk_s = info.frames / info.samplerate
                    op = None
                    if openpose_root is not None:
                        opd = Path(openpose_root) / split_dir.name / inst_dir.name
                        op = [opd / f"{frames[k].stem}_keypoints.json" for k in run]
                    clips.append(SubURMPClip(
                        id=f"{split_dir.name}/{inst_dir.name}/{rec}_{run[0]}", instrument=inst_dir.name,
                        split=split_dir.name, images=[frames[k] for k in run], chunks=chunks,
                        chunk_seconds=chunk_s, openpose=op))
    if not clips:
        raise fmt.DatasetError(f"no Sub-URMP clips under {root} (instrument={instrument}, split={split})")
    return clips
