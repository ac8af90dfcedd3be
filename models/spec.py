"""The shared audio and video contracts: :class:`AudioSpec` and :class:`VideoSpec`.

Every checkpoint, manifest and dataset stores these two specs (as JSON), and every
part of letsplay reads its numbers from them; nothing re-types a sample rate or a hop.

AudioSpec describes the constant-Q front end of the paper (section III-A: the model
sees an 84x87 CQT window, ~0.5 s of audio), and how each CQT column is aligned in time:

* ``causal`` (default): every bin's kernel *ends* at the column's time, so a column
  at time t only depends on audio before t. High bins react within milliseconds; only
  the lowest octave looks ~0.5 s back. This is what makes live input responsive.
* ``centered``: every kernel is centred on the column's time (nnAudio's / librosa's
  convention, as used by the paper). A column then needs audio up to half the longest
  kernel *after* its time, so a live stream can only produce it ~257 ms later.

VideoSpec fixes the frame clock: frame ``i`` is shown at ``i / fps`` seconds and sees
audio up to that time, plus an optional lookahead that delays display by as much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from letsplay.models.config import DictConfig

Alignment = Literal["causal", "centered"]
Scaling = Literal["magnitude", "log"]

SPEC_VERSION = 1


class SpecError(ValueError):
    """A spec has an invalid value, or a stored spec cannot be read."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SpecError(msg)


@dataclass(frozen=True)
class AudioSpec(DictConfig):
    """How audio becomes model input. Frozen; stored in every checkpoint and manifest.

    ``to_dict``/``from_dict``/``to_json``/``from_json`` follow :mod:`letsplay.models.config`'s
    strict rules; reading errors are :class:`SpecError`.
    """

    config_error: ClassVar[type[ValueError]] = SpecError

    sample_rate: int = 44100  # Hz; all audio is resampled to this on load
    hop: int = 256  # samples between CQT columns (5.8 ms at 44.1 kHz)
    n_bins: int = 84  # CQT bins (7 octaves)
    bins_per_octave: int = 12  # semitone resolution
    fmin: float = 32.70  # Hz, the lowest bin's centre (C1)
    window_columns: int = 87  # CQT columns in one model input window (~0.5 s)
    scaling: Scaling = "magnitude"  # "magnitude" = |CQT|; "log" = log1p(|CQT|)
    alignment: Alignment = "causal"  # where each column's kernels sit relative to its time

    def __post_init__(self) -> None:
        _check(_is_int(self.sample_rate) and self.sample_rate > 0,
               f"AudioSpec.sample_rate must be a positive int, got {self.sample_rate!r}")
        _check(_is_int(self.hop) and self.hop > 0,
               f"AudioSpec.hop must be a positive int, got {self.hop!r}")
        _check(_is_int(self.n_bins) and self.n_bins > 0,
               f"AudioSpec.n_bins must be a positive int, got {self.n_bins!r}")
        _check(_is_int(self.bins_per_octave) and self.bins_per_octave > 0,
               f"AudioSpec.bins_per_octave must be a positive int, got {self.bins_per_octave!r}")
        _check(isinstance(self.fmin, (int, float)) and math.isfinite(self.fmin) and self.fmin > 0,
               f"AudioSpec.fmin must be a positive frequency in Hz, got {self.fmin!r}")
        _check(_is_int(self.window_columns) and self.window_columns > 0,
               f"AudioSpec.window_columns must be a positive int, got {self.window_columns!r}")
        _check(self.scaling in ("magnitude", "log"),
               f"AudioSpec.scaling must be 'magnitude' or 'log', got {self.scaling!r}")
        _check(self.alignment in ("causal", "centered"),
               f"AudioSpec.alignment must be 'causal' or 'centered', got {self.alignment!r}")
        _check(self.fmax < self.sample_rate / 2,
               f"AudioSpec: the top CQT bin ({self.fmax:.1f} Hz) must lie below Nyquist "
               f"({self.sample_rate / 2:.1f} Hz); lower n_bins or fmin, or raise sample_rate")

    @property
    def fmax(self) -> float:
        """Centre frequency of the top bin, Hz (inf when it would overflow a float)."""
        octaves = (self.n_bins - 1) / self.bins_per_octave
        return math.inf if octaves > 1000 else float(self.fmin) * 2.0 ** octaves

    @property
    def column_rate(self) -> float:
        """CQT columns per second."""
        return self.sample_rate / self.hop

    @property
    def window_seconds(self) -> float:
        """Audio time spanned by one model window of ``window_columns`` columns."""
        return self.window_columns * self.hop / self.sample_rate


@dataclass(frozen=True)
class VideoSpec(DictConfig):
    """The frame clock and frame size. Frozen; stored in every checkpoint and manifest.

    Stored and read like :class:`AudioSpec` (errors are :class:`SpecError`).
    """

    config_error: ClassVar[type[ValueError]] = SpecError

    fps: float = 30.0  # frames per second; frame i is at time i / fps
    height: int = 256  # frame height in pixels (paper: 256)
    width: int = 256  # frame width in pixels (paper: 256)
    lookahead_ms: float = 0.0  # future audio each frame may see; display is delayed as much

    def __post_init__(self) -> None:
        _check(isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0,
               f"VideoSpec.fps must be a positive number, got {self.fps!r}")
        _check(_is_int(self.height) and self.height >= 8,
               f"VideoSpec.height must be an int >= 8, got {self.height!r}")
        _check(_is_int(self.width) and self.width >= 8,
               f"VideoSpec.width must be an int >= 8, got {self.width!r}")
        _check(isinstance(self.lookahead_ms, (int, float)) and math.isfinite(self.lookahead_ms)
               and self.lookahead_ms >= 0,
               f"VideoSpec.lookahead_ms must be >= 0, got {self.lookahead_ms!r}")

    def frame_time(self, i: int) -> float:
        """Display time of frame ``i`` in seconds (without the lookahead delay)."""
        return i / self.fps
