"""The sink contract: :class:`FrameOut`, the :class:`Sink` protocol, :class:`SinkError`,
and the checks every sink shares (output paths, frame / keypoint / audio shapes).

:mod:`letsplay.realtime.sinks` re-exports all of it; import it from there.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

N_KEYPOINTS = 67  # OpenPose BODY_25 + two hands (DESIGN.md, "Skeleton")


# --------------------------------------------------------------------------- contract


@dataclass(frozen=True)
class FrameOut:
    index: int  # frame number i since the stream start
    time: float  # i / fps seconds, derived from the audio sample clock
    frame: np.ndarray  # [H, W, 3] uint8 RGB
    keypoints: np.ndarray  # [67, 2] float32, normalised [0,1] (x=col/W, y=row/H)
    stream: int = 0  # stream id when several streams run batched
    views: Mapping[str, np.ndarray] = field(default_factory=dict)  # optional debug views (heatmap, coarse) as uint8 RGB


@runtime_checkable
class Sink(Protocol):
    def open(self, audio: AudioSpec, video: VideoSpec) -> None: ...
    def write_frame(self, f: FrameOut) -> None: ...
    # mono float32 at audio.sample_rate; start_sample = master clock position of samples[0]
    def write_audio(self, samples: np.ndarray, start_sample: int) -> None: ...
    def close(self) -> None: ...


class SinkError(OSError):
    """A sink cannot write where it was told to (missing or unwritable folder, full disk,
    a closed pipe...). The message says what was wrong and what to do."""


# --------------------------------------------------------------------------- helpers


def fps_fraction(fps: float) -> Fraction:
    """``fps`` as an exact fraction: 30 -> 30, 29.97 -> 2997/100, 30000/1001 -> 30000/1001.

    Frame ``i`` is at ``i / fps_fraction(fps)`` seconds, which is ``VideoSpec.frame_time(i)``."""
    return Fraction(fps).limit_denominator(1001)


def _check_output_path(path: Path, what: str) -> Path:
    """Fail early, with advice, when ``path`` cannot be created: raised by ``open()``,
    so a bad ``--record`` path is reported before rendering starts, not minutes later."""
    path = Path(path).expanduser()
    parent = path.parent.resolve() if str(path.parent) else Path.cwd()
    if not parent.exists():
        raise SinkError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} does not exist; "
                        f"create it first (mkdir -p {str(parent)!r}) or choose another path")
    if not parent.is_dir():
        raise SinkError(f"cannot write the {what} {str(path)!r}: {str(parent)!r} is not a folder; "
                        f"choose a path inside a folder")
    if path.is_dir():
        raise SinkError(f"cannot write the {what} {str(path)!r}: it is a folder; give a file name, "
                        f"e.g. {str(path / ('out' + (path.suffix or '.mp4')))!r}")
    # os.access is not enough (root, read-only mounts, ACLs): really create a file there.
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise SinkError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} is not writable "
                        f"({e.strerror or e}); choose a folder you can write to or fix its permissions") from e
    return path


def _warn_sometimes(count: int, msg: str, *args: object) -> None:
    """Log a repeated problem the 1st, 10th, 100th, 1000th... time: seen, but no log flood at 30 fps."""
    if count == 1 or math.log10(count).is_integer():
        log.warning(msg, *args)


def _as_frame(f: FrameOut, video: VideoSpec, who: str) -> np.ndarray:
    img = np.asarray(f.frame)
    if img.shape != (video.height, video.width, 3) or img.dtype != np.uint8:
        raise ValueError(f"{who}: frame {f.index} is {img.dtype}{list(img.shape)}, expected uint8 "
                         f"[{video.height}, {video.width}, 3] RGB as the VideoSpec says; convert it "
                         f"(np.clip(x * 255, 0, 255).astype(np.uint8)) or open the sink with the right VideoSpec")
    return np.ascontiguousarray(img)


def _as_keypoints(f: FrameOut, who: str) -> np.ndarray:
    kp = np.asarray(f.keypoints, dtype=np.float32)
    if kp.shape != (N_KEYPOINTS, 2):
        raise ValueError(f"{who}: frame {f.index} has keypoints of shape {list(kp.shape)}, "
                         f"expected [{N_KEYPOINTS}, 2] (normalised x, y)")
    return kp


def _as_audio(samples: np.ndarray, who: str) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"{who}: audio must be mono [N] at the AudioSpec's sample rate, got shape {list(x.shape)}; "
                         f"average the channels first")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        log.warning("%s: audio block has NaN/inf samples; they are recorded as silence", who)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


# --------------------------------------------------------------------------- mp4
