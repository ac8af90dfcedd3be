"""The player's fingering as a state the KHP carries, from the pitch heard: the cellist's string
and stop, the trombonist's slide position.

A cellist's left hand and bowing arm are set by the note: its pitch names a string and a
stop on it, and which string a player takes depends on the string already in use (a
player stays on a string while the note lies a few semitones above it, rather than cross
needlessly). A trombonist's slide is set by the note too: each position lowers the pitch a
semitone, and the player takes the position the chart names
(:data:`letsplay.models.data.instruments.TROMBONE_POSITIONS`). The KHP's regressions learnt
these from the sound and their own history, were a semitone off on average and more on a
sound they had not heard, and the arm followed their error.

The fingering state makes it explicit, as the bow-direction state makes the bow's reversals
explicit. The KHP's pitch detector (:class:`letsplay.models.streaming_encoder.PitchDetector`)
names the pitch of the latest note; when it names a new one with confidence, the state
takes the note's fingering:

* cello: the string and stop by the players' rule
  (:func:`letsplay.models.data.instruments.cello_string_for`,
  :func:`~letsplay.models.data.instruments.cello_stop_fraction`): the string in use is kept
  while the pitch lies up to :data:`~letsplay.models.data.instruments.CELLO_MAX_STRETCH`
  semitones above its open pitch, otherwise the highest string at or below the pitch; an
  open string leaves the left hand where it was;
* trombone: the chart's slide position for the pitch (a pitch off the chart leaves the
  slide where it was).

The keypoint readout reads the fingering in place of the regressions.

The state is ``[B, 3]``: the pitch heard last (MIDI number, -1 before any) and two values,
the cello's string (0 = C .. 3 = A) and stop (fraction of the string from the nut), the
trombone's slide position (1 .. 7) and an unused zero; each less its value at rest
(:func:`fingering_values` adds them back), so that a fresh state is zeros. The update is
plain tensor arithmetic (max, gather, where), exported with the KHP like every state.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from letsplay.models.data.instruments import (
    CELLO_MAX_STRETCH,
    CELLO_STRINGS,
    TROMBONE_POSITIONS,
    cello_stop_fraction,
    get_instrument,
)

FINGERING_CONFIDENCE = 0.5  # a pitch the detector names with at least this probability moves the fingering
FINGERING_INSTRUMENTS = ("cello", "trombone")
# before any note is heard: the cellist on the D string, first position (where the synthetic
# cellist rests); the trombonist's slide closed (first position)
REST_STRING, REST_PITCH = 2, 52
REST_SLIDE = 1


def pitch_classes(instrument: str) -> tuple[int, int]:
    """(lowest MIDI pitch, number of pitches) the pitch detector tells apart for ``instrument``."""
    inst = get_instrument(instrument)
    return inst.low, inst.high - inst.low + 1


def check_instrument(instrument: str) -> None:
    if instrument not in FINGERING_INSTRUMENTS:
        raise ValueError(f"the fingering state (KeypointConfig.pitch_detector) is the cello's string and stop "
                         f"or the trombone's slide; {instrument!r} has none. Set pitch_detector=0 for it")


def _rest(instrument: str, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """``[3]``: the fingering before any note is heard: no pitch, and the cello's D string in
    first position or the trombone's closed slide."""
    check_instrument(instrument)
    if instrument == "trombone":
        return torch.tensor([-1.0, float(REST_SLIDE), 0.0], dtype=dtype, device=device)
    return torch.tensor([-1.0, float(REST_STRING), cello_stop_fraction(REST_PITCH, REST_STRING)],
                        dtype=dtype, device=device)


@functools.lru_cache(maxsize=4)
def slide_chart(low: int, n_pitches: int) -> Tensor:
    """``[n_pitches]``: the trombone's slide position for pitch ``low + i``, 0 off the chart
    (made once: every frame's step reads it)."""
    return torch.tensor([float(TROMBONE_POSITIONS.get(low + i, 0)) for i in range(n_pitches)])


def fingering_init(batch: int, device: torch.device | str | None = None) -> Tensor:
    """``[B, 3]`` zeros: the state holds the fingering less its rest (every initial state is
    zeros, the export's contract), so a fresh state is no pitch heard, the D string, first position."""
    return torch.zeros(batch, 3, device=device)


def fingering_step(logits: Tensor, state: Tensor, low: int, instrument: str) -> Tensor:
    """The state after one frame: ``logits [B, n_pitches]`` (pitch ``low + i``), ``state [B, 3]``."""
    rest = _rest(instrument, state.dtype, state.device)
    now = state + rest  # (pitch heard last, string, stop) / (pitch heard last, slide, 0)
    conf, idx = torch.softmax(logits, dim=-1).max(dim=-1, keepdim=True)
    pitch = idx.to(state.dtype) + float(low)
    heard = now[:, 0:1]
    change = (conf > FINGERING_CONFIDENCE) & (pitch != heard)
    if instrument == "trombone":
        chart = slide_chart(low, logits.shape[-1]).to(dtype=state.dtype, device=state.device)
        position = chart[idx]  # [B, 1], 0 off the chart
        slide = torch.where(position > 0, position, now[:, 1:2])
        return torch.where(change, torch.cat([pitch, slide, now[:, 2:3]], dim=1), now) - rest
    opens = torch.tensor(CELLO_STRINGS, dtype=state.dtype, device=state.device)
    string, stop = now[:, 1:2], now[:, 2:3]
    highest = ((opens[None, :] <= pitch).to(state.dtype).sum(dim=-1, keepdim=True) - 1.0).clamp_min(0.0)
    open_now = opens[string.round().long().clamp(0, len(CELLO_STRINGS) - 1)]
    keep = (open_now <= pitch) & (pitch <= open_now + float(CELLO_MAX_STRETCH))
    new_string = torch.where(keep, string, highest)
    semis = pitch - opens[new_string.round().long()]
    new_stop = torch.where(semis > 0, 1.0 - torch.pow(2.0, -semis.clamp_min(0.0) / 12.0), stop)
    return torch.where(change, torch.cat([pitch, new_string, new_stop], dim=1), now) - rest


def fingering_read(state: Tensor, instrument: str) -> Tensor:
    """``[B, 2]`` on the motion targets' scale (:mod:`letsplay.models.motion_targets`): the
    cello's string (0 = C .. 1 = A) and stop; the trombone's slide (0 = first .. 1 = seventh
    position) and a zero (its second target, the loudness, is not the fingering's)."""
    now = state + _rest(instrument, state.dtype, state.device)
    if instrument == "trombone":
        return torch.cat([(now[:, 1:2] - 1.0) / 6.0, now[:, 2:3]], dim=1)
    return torch.cat([now[:, 1:2] / float(len(CELLO_STRINGS) - 1), now[:, 2:3]], dim=1)


def fingering_values(state: Tensor, instrument: str) -> Tensor:
    """``[B, 3]``: the state as (pitch heard last or -1, string 0 = C .. 3 = A, stop) for the
    cello, (pitch heard last or -1, slide position 1 .. 7, 0) for the trombone."""
    return state + _rest(instrument, state.dtype, state.device)


def heard_pitch(notes: list | None, n_frames: int, fps: float, lead_s: float, low: int, n_pitches: int
                ) -> np.ndarray:
    """[T] int64: the pitch detector's target per frame, the class (``pitch - low``) of the
    latest note begun by ``lead_s`` after the frame's display time (at most its lookahead,
    the newest audio it hears); -1 before the first note, without notes, and for a pitch
    outside the classes."""
    out = np.full(n_frames, -1, np.int64)
    if not notes:
        return out
    on = np.array([float(n[0]) for n in notes])
    pitch = np.array([int(n[2]) for n in notes])
    order = np.argsort(on, kind="stable")
    on, pitch = on[order], pitch[order]
    t = np.arange(n_frames) / fps + lead_s
    k = np.searchsorted(on, t + 1e-6, side="right") - 1
    cls = np.where(k >= 0, pitch[np.clip(k, 0, None)] - low, -1)
    return np.where((cls >= 0) & (cls < n_pitches), cls, -1).astype(np.int64)
