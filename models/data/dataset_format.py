"""The letsplay dataset format (version 2): one folder per clip, a JSON manifest on top.

See ``docs/dataset-format.md`` for the full description. In short::

    DIR/manifest.json                 dataset manifest (format, specs, instrument, clip list)
    DIR/scores/<piece>.json           note lists the synthetic clips were cut from (synthetic only)
    DIR/clips/<clip id>/clip.json     the clip's manifest; written last: a clip is complete iff it exists
    DIR/clips/<clip id>/video.mp4     H.264 frames, frame i at i / fps (or frames/000000.jpg ...)
    DIR/clips/<clip id>/audio.wav     mono, AudioSpec.sample_rate, 16-bit PCM
    DIR/clips/<clip id>/keypoints.npz times [T], keypoints [T, 67, 2] in [0, 1], confidence [T, 67];
                                      format 2 adds instrument_points [T, K, 2], instrument_confidence
                                      [T, K] and instrument_point_names [K] (synthetic only)
    DIR/clips/<clip id>/parts.npz     format 2: labels [T, H, W] uint8 part-label maps, label_names
                                      (synthetic only)
    DIR/clips/<clip id>/notes.json    the notes played (synthetic only)
    DIR/clips/<clip id>/motion.npz    the synthetic performer's physics per frame (synthetic only)

Format-1 folders (no instrument points, no part maps) still read; newer formats are refused.

Clips are written into a temporary folder beside their final place and renamed into
place when complete, so an interrupted run leaves no half clip that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.skeleton import N_KEYPOINTS
from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

FORMAT_NAME = "letsplay-dataset"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1: no instrument points, no parts.npz
MANIFEST = "manifest.json"
CLIP_MANIFEST = "clip.json"
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset folder is missing, damaged, or not the dataset that was asked for."""


# --------------------------------------------------------------------------- JSON helpers


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); the file is damaged") from e


# --------------------------------------------------------------------------- video I/O


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """H.264 (libx264, yuv420p) mp4 via PyAV. Frame i gets pts i in a 1/fps time base,
    with a keyframe every ``gop`` frames so readers can seek cheaply."""

    def __init__(self, path: Path, video: VideoSpec, crf: int = 20, gop: int = 30, preset: str = "veryfast",
                 threads: int = 0) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        rate = fps_fraction(video.fps)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = video.width, video.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = 1 / rate
        self.stream.codec_context.gop_size = gop
        self.stream.codec_context.thread_count = threads  # 0 = the encoder's choice
        self.stream.options = {"crf": str(crf), "preset": preset, "keyint": str(gop), "min-keyint": str(gop),
                               "sc_threshold": "0", "bf": "0"}
        self.n = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.n
        self.n += 1
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoReader:
    """Random access to the frames of a video file (seek to the keyframe, decode forward).

    PyAV reads it; where PyAV is not installed (a training machine with a bare Python that
    has OpenCV), OpenCV's FFmpeg backend does, frame-exact for the constant-rate mp4s
    letsplay writes (colours may differ from PyAV's by a level or two: another YUV->RGB
    conversion)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container: Any = None
        self._pid = -1
        self._cv = False  # True: OpenCV reads (PyAV is missing)

    def _open(self) -> Any:
        if self._container is None or self._pid != os.getpid():  # containers do not survive fork
            try:
                import av
            except ImportError:
                import cv2

                cap = cv2.VideoCapture(str(self.path))
                if not cap.isOpened():
                    raise DatasetError(f"{self.path}: OpenCV cannot open this video (PyAV is not installed)") from None
                self._container, self._cv = cap, True
            else:
                self._container, self._cv = av.open(str(self.path)), False
            self._pid = os.getpid()
        return self._container

    @property
    def fps(self) -> float:
        c = self._open()
        if self._cv:
            import cv2

            return float(c.get(cv2.CAP_PROP_FPS))
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate)

    def _cv_frames(self, start: int, count: int | None) -> Iterator[np.ndarray]:
        import cv2

        cap = self._open()
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        n = 0
        while count is None or n < count:
            ok, bgr = cap.read()
            if not ok:
                return
            n += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frames(self, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start+count-1`` as RGB uint8 [count, H, W, 3]."""
        c = self._open()
        out: list[np.ndarray] = []
        if self._cv:
            out = list(self._cv_frames(start, count))
        else:
            stream = c.streams.video[0]
            tb = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            pts = int(round(start / rate / tb)) if start > 0 else 0
            c.seek(pts, stream=stream, backward=True, any_frame=False)
            for frame in c.decode(stream):
                idx = int(round(float(frame.pts * tb * rate))) if frame.pts is not None else len(out) + start
                if idx < start:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == count:
                    break
        if len(out) != count:
            raise DatasetError(f"{self.path}: wanted frames {start}..{start + count - 1}, got {len(out)}")
        return np.stack(out)

    def __iter__(self) -> Iterator[np.ndarray]:
        c = self._open()
        if self._cv:
            yield from self._cv_frames(0, None)
            return
        c.seek(0, stream=c.streams.video[0])
        for frame in c.decode(c.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        if self._container is not None:
            if self._cv:
                self._container.release()
            else:
                self._container.close()
            self._container = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_container": None, "_pid": -1, "_cv": False}


# --------------------------------------------------------------------------- audio / keypoints


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")


def read_audio(path: Path, spec: AudioSpec) -> np.ndarray:
    """Mono float32 at ``spec.sample_rate`` (letsplay's one audio loader)."""
    from letsplay.models.audio import load_audio

    return load_audio(path, spec.sample_rate)


def write_keypoints(path: Path, times: np.ndarray, keypoints: np.ndarray, confidence: np.ndarray,
                    instrument_points: np.ndarray | None = None,
                    instrument_point_names: tuple[str, ...] | list[str] | None = None,
                    instrument_confidence: np.ndarray | None = None) -> None:
    """Write ``keypoints.npz``; with ``instrument_points`` ([T, K, 2], names [K], confidence
    [T, K], default 1) the instrument's points too (format 2)."""
    T = len(times)
    if keypoints.shape != (T, N_KEYPOINTS, 2) or confidence.shape != (T, N_KEYPOINTS):
        raise ValueError(f"keypoints must be [T, {N_KEYPOINTS}, 2] and confidence [T, {N_KEYPOINTS}] for T={T}; "
                         f"got {keypoints.shape} and {confidence.shape}")
    extra: dict[str, np.ndarray] = {}
    if instrument_points is not None:
        names = list(instrument_point_names or [])
        K = len(names)
        if instrument_points.shape != (T, K, 2):
            raise ValueError(f"instrument_points must be [T, K, 2] with T={T} and K={K} (one per name in "
                             f"instrument_point_names); got {instrument_points.shape}")
        conf = (np.ones((T, K), np.float32) if instrument_confidence is None
                else np.asarray(instrument_confidence, np.float32))
        if conf.shape != (T, K):
            raise ValueError(f"instrument_confidence must be [T, K] = [{T}, {K}]; got {conf.shape}")
        extra = {"instrument_points": instrument_points.astype(np.float32), "instrument_confidence": conf,
                 "instrument_point_names": np.array(names, dtype=str)}
    elif instrument_point_names is not None or instrument_confidence is not None:
        raise ValueError("instrument_point_names / instrument_confidence need instrument_points")
    np.savez_compressed(path, times=times.astype(np.float64), keypoints=keypoints.astype(np.float32),
                        confidence=confidence.astype(np.float32), format_version=np.int32(FORMAT_VERSION), **extra)


def read_keypoints(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [T], keypoints [T, 67, 2], confidence [T, 67])."""
    with np.load(path) as z:
        _check_file_version(path, z)
        return z["times"], z["keypoints"], z["confidence"]


def _check_file_version(path: Path, z: Any) -> None:
    v = int(z["format_version"]) if "format_version" in z.files else 1
    if v > FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {v}, newer than this letsplay reads ({FORMAT_VERSION}); "
                           f"update letsplay")


@dataclass(frozen=True)
class InstrumentPoints:
    """A clip's instrument points (format 2): points [T, K, 2] normalised like the keypoints,
    confidence [T, K], names [K] (``skeleton.instrument_point_names``)."""

    points: np.ndarray
    confidence: np.ndarray
    names: tuple[str, ...]


def read_instrument_points(path: Path) -> InstrumentPoints | None:
    """The instrument points of a ``keypoints.npz``, or None when it has none (format 1, or
    a clip prepared from video)."""
    with np.load(path) as z:
        _check_file_version(path, z)
        if "instrument_points" not in z.files:
            return None
        return InstrumentPoints(z["instrument_points"], z["instrument_confidence"],
                                tuple(str(n) for n in z["instrument_point_names"]))


def write_parts(path: Path, labels: np.ndarray, label_names: tuple[str, ...] | list[str]) -> None:
    """Write ``parts.npz``: per-frame part-label maps uint8 [T, H, W] (compressed) and the
    name of each label id."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 3:
        raise ValueError(f"part labels must be uint8 [T, H, W]; got {labels.dtype} {labels.shape}")
    if len(label_names) < 1 or int(labels.max(initial=0)) >= len(label_names):
        raise ValueError(f"part labels use ids up to {int(labels.max(initial=0))} but only {len(label_names)} "
                         f"label names were given")
    np.savez_compressed(path, labels=labels, label_names=np.array(list(label_names), dtype=str),
                        format_version=np.int32(FORMAT_VERSION))


def read_parts(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(labels uint8 [T, H, W], label names) of a ``parts.npz``."""
    with np.load(path) as z:
        _check_file_version(path, z)
        return z["labels"], tuple(str(n) for n in z["label_names"])


# --------------------------------------------------------------------------- manifests


def dataset_manifest(kind: str, instrument: str, audio: AudioSpec, video: VideoSpec, config: dict[str, Any],
                     clips: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "instrument": instrument,
        "audio_spec": audio.to_dict(), "video_spec": video.to_dict(), "config": config, "clips": clips,
        "complete": False,
    }


def load_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root} has no {MANIFEST}: not a letsplay dataset (make one with "
                           f"'letsplay data synth' or 'letsplay data prepare')")
    m = read_json(path)
    if m.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a letsplay dataset manifest (format={m.get('format')!r})")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {m['format_version']}, newer than this letsplay "
                           f"reads ({FORMAT_VERSION}); update letsplay")
    return m


def check_same_dataset(existing: dict[str, Any], wanted: dict[str, Any], root: Path) -> None:
    """Refuse to mix two different datasets in one folder."""
    keys = ("format_version", "kind", "instrument", "audio_spec", "video_spec", "config")
    diffs = [k for k in keys if existing.get(k) != wanted.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: existing {existing.get(k)!r} vs requested {wanted.get(k)!r}" for k in diffs)
        raise DatasetError(f"{root} already holds a different dataset ({detail}). Choose another --out "
                           f"folder, or delete {root} to start over")


@dataclass(frozen=True)
class ClipFiles:
    """Paths inside one clip folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / CLIP_MANIFEST

    @property
    def video(self) -> Path:
        return self.root / "video.mp4"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def audio(self) -> Path:
        return self.root / "audio.wav"

    @property
    def cqt(self) -> Path:
        """A packed clip's CQT (float16 [n_bins, n_columns]) in place of its audio: see
        ``scripts/pack_training_data.py``; ``clip.json`` then has ``packed_cqt``."""
        return self.root / "cqt.npy"

    @property
    def keypoints(self) -> Path:
        return self.root / "keypoints.npz"

    @property
    def notes(self) -> Path:
        return self.root / "notes.json"

    @property
    def motion(self) -> Path:
        return self.root / "motion.npz"

    @property
    def parts(self) -> Path:
        return self.root / "parts.npz"


def clip_dir(root: Path, clip_id: str) -> Path:
    return Path(root) / "clips" / clip_id


def clip_complete(root: Path, clip_id: str) -> bool:
    return (clip_dir(root, clip_id) / CLIP_MANIFEST).is_file()


def begin_clip(root: Path, clip_id: str) -> ClipFiles:
    """A fresh temporary folder to write a clip into (see :func:`commit_clip`)."""
    base = Path(root) / "clips"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{clip_id}-", dir=base))
    os.chmod(tmp, 0o777 & ~_umask())
    return ClipFiles(tmp)


def commit_clip(root: Path, clip_id: str, files: ClipFiles, clip_manifest: dict[str, Any]) -> Path:
    """Write the clip manifest last, then rename the folder into place."""
    write_json_atomic(files.manifest, clip_manifest)
    final = clip_dir(root, clip_id)
    if final.exists():  # an incomplete leftover (no clip.json) from an interrupted run
        shutil.rmtree(final)
    os.replace(files.root, final)
    return final


def abort_clip(files: ClipFiles) -> None:
    shutil.rmtree(files.root, ignore_errors=True)


def remove_stale_temp(root: Path) -> int:
    """Delete temporary clip folders left by interrupted runs; returns how many."""
    base = Path(root) / "clips"
    n = 0
    if base.is_dir():
        for p in base.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


@contextlib.contextmanager
def dataset_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` exclusively while writing a dataset: a second process writing to
    the same folder at the same time is refused (the lock dies with its process, so an
    interrupted run never blocks the next)."""
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise DatasetError(f"{root} is being written by {who} right now; wait for it to finish "
                               f"(or stop it) before starting another run on the same folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def split_for(piece_ids: list[str], seed: int, fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, str]:
    """Assign whole pieces to splits (never frames): a seeded order of the distinct pieces,
    about ``fractions`` (val, test) of them to val and test, at least one each when there
    are three or more pieces, the rest to train."""
    import zlib

    uniq = sorted(set(piece_ids), key=lambda p: (zlib.crc32(f"{seed}:{p}".encode()), p))
    n = len(uniq)
    n_val = max(1 if n >= 3 else 0, int(round(fractions[0] * n)))
    n_test = max(1 if n >= 3 else 0, int(round(fractions[1] * n)))
    out = {}
    for i, p in enumerate(uniq):
        out[p] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return out
