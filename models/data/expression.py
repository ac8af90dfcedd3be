"""Expressive gestures shared by the sound and the picture of the synthetic performer.

Vibrato is both: the audio renderer bends the pitch by :func:`vibrato_semitones` and the
cellist's left hand rolls along the string by the distance that produces that very bend
(:mod:`letsplay.models.data.performer_motion`), so what is heard and what is seen agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from letsplay.models.data.scores import Note


@dataclass(frozen=True)
class Vibrato:
    """Periodic pitch modulation on sustained notes."""

    depth: float = 0.2  # semitones, peak (20 cents, a moderate string vibrato)
    rate: float = 5.5  # Hz
    delay: float = 0.15  # seconds after the onset before the vibrato starts
    ramp: float = 0.25  # seconds from the start of the vibrato to full depth
    min_duration: float = 0.4  # notes shorter than this get no vibrato


NO_VIBRATO = Vibrato(depth=0.0)


def vibrato_semitones(notes: Sequence[Note], t: np.ndarray, vib: Vibrato,
                      allowed: Sequence[bool] | None = None) -> np.ndarray:
    """Pitch offset in semitones at times ``t`` (seconds) for sorted, monophonic ``notes``.

    ``allowed[i]`` False: note i gets no vibrato (a cello's open strings cannot have any)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    if vib.depth == 0.0 or not notes:
        return out
    onsets = np.array([n.onset for n in notes])
    ends = np.array([n.end for n in notes])
    durs = ends - onsets
    i = np.searchsorted(onsets, t, side="right") - 1
    ok = i >= 0
    ii = np.where(ok, i, 0)
    ok &= (t < ends[ii]) & (durs[ii] >= vib.min_duration)
    if allowed is not None:
        ok &= np.asarray(allowed, dtype=bool)[ii]
    tau = t - onsets[ii] - vib.delay  # time since the vibrato started
    ok &= tau > 0
    env = np.clip(tau / max(vib.ramp, 1e-6), 0.0, 1.0)
    env = env * env * (3 - 2 * env)  # smoothstep: the finger eases into the motion
    out[ok] = (vib.depth * env * np.sin(2 * np.pi * vib.rate * tau))[ok]
    return out
