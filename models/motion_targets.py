"""Per-frame motion targets for KHP's motion heads, from a clip's notes and physics state.

For frame ``i`` (shown at ``t_i = i / fps``), in the order of
:data:`letsplay.models.keypoints.MOTION_CHANNELS`:

* ``onset``: 1 when a note begins in ``(t_{i-1}, t_i]``;
* ``direction``: the cello's bow direction, 1 down-bow / 0 up-bow (the bow reverses at
  every onset, the first stroke a down-bow; :func:`~letsplay.models.data.performer_motion.plan_bow`);
* ``travel``: the cello bow's contact point, 0 at ``BOW_LO`` .. 1 at ``BOW_HI``;
* ``aux_a`` / ``aux_b``: cello -- the string the bow plays (0 = C .. 1 = A) and the left
  hand's stop (fraction of the string); trombone -- the slide position (0 = first .. 1 =
  seventh) and the loudness;
* ``sounding``: 1 while a note sounds (bowing / playing).

A clip without the notes or the physics (a prepared video) gets a mask of zeros for what
it lacks, so those terms simply do not count.
"""

from __future__ import annotations

import numpy as np

from letsplay.models.data.performer_motion import BOW_HI, BOW_LO, plan_bow
from letsplay.models.data.scores import Note

N_MOTION = 6


def onset_frames(onsets: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """[T] 1.0 where a note onset falls in the frame's interval ``(t_{i-1}, t_i]``."""
    out = np.zeros(n_frames, np.float32)
    idx = np.ceil(np.asarray(onsets, np.float64) * fps - 1e-6).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < n_frames)]
    out[idx] = 1.0
    return out


def bow_direction(notes: list[Note], n_frames: int, fps: float) -> np.ndarray:
    """[T] 1 down-bow / 0 up-bow: the direction of the latest note begun by each frame
    (before the first note: up, so the first onset starts a down-bow)."""
    t = np.arange(n_frames) / fps
    if not notes:
        return np.zeros(n_frames, np.float32)
    _, direction, _ = plan_bow(notes)
    on = np.array([n.onset for n in notes])
    k = np.searchsorted(on, t + 1e-6, side="right") - 1
    d = np.where(k < 0, -1.0, direction[np.clip(k, 0, len(notes) - 1)])
    return (d > 0).astype(np.float32)


def motion_targets(instrument: str, notes: list[tuple] | None, motion: dict[str, np.ndarray] | None,
                   n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(values ``[T, 6]``, mask ``[T, 6]``) float32 for one clip; see the module docstring."""
    val = np.zeros((n_frames, N_MOTION), np.float32)
    mask = np.zeros((n_frames, N_MOTION), np.float32)
    if notes is not None:
        ns = [Note(float(n[0]), float(n[1]), int(n[2]), int(n[3])) for n in notes]
        val[:, 0] = onset_frames(np.array([n.onset for n in ns]), n_frames, fps)
        mask[:, 0] = 1.0
        if instrument == "cello":
            val[:, 1] = bow_direction(ns, n_frames, fps)
            mask[:, 1] = 1.0

    def put(ch: int, key: str, lo: float, hi: float) -> None:
        if motion is None or key not in motion:
            return
        v = np.asarray(motion[key], np.float64)[:n_frames]
        val[: len(v), ch] = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
        mask[: len(v), ch] = 1.0

    if instrument == "cello":
        put(2, "bow_position", BOW_LO, BOW_HI)
        put(3, "bow_string", 0.0, 3.0)
        put(4, "stop_fraction", 0.0, 1.0)
        put(5, "bowing", 0.0, 1.0)
    elif instrument == "trombone":
        put(3, "slide_position", 1.0, 7.0)
        put(4, "loudness", 0.0, 1.0)
        put(5, "playing", 0.0, 1.0)
    return val, mask
