"""Audio-motion sync that chance and jitter cannot pass.

Do the bowing / sliding hand's motion events fall on the note onsets? :func:`motion_events`
finds the events (speed minima of the right wrist after real travel: bow reversals, slide
arrivals), :func:`sync_counts` matches them one to one with the onset frames within
+-:data:`SYNC_TOLERANCE` frames and :func:`pool_sync` turns the counts into an F1, its
chance level (the same number of events, spaced as they were, placed at random) and the
chance-corrected ``c = (f1 - chance) / (1 - chance)``: ~0 for events at random frames or a
jittering hand, 1 for events exactly on the onsets, below 0 for a hand that never moves.
The best lag (the motion's latency) is searched over +-:data:`SYNC_MAX_LAG` frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from letsplay.models.skeleton import BODY_25_NAMES

RIGHT_WRIST = BODY_25_NAMES.index("r_wrist")  # the bowing hand (cello) and the slide hand (trombone)
SYNC_TOLERANCE = 2  # frames either side of an onset an event may fall and still match it
SYNC_MAX_LAG = 15  # frames; the best lag is searched in [-SYNC_MAX_LAG, SYNC_MAX_LAG]
SYNC_CHANCE_DRAWS = 200  # random placements averaged for the chance level


@dataclass(frozen=True)
class EventDetector:
    """Thresholds of :func:`motion_events` for one instrument (normalised units: a
    fraction of the frame's width / height, per frame).

    ``min_travel`` is the wrist's path length (of its smoothed track) needed since the
    previous event: a speed minimum without real travel (the body's slow sway, a still
    hand's noise floor) is no event. ``flat`` says which frames belong to one flat
    bottom: those with speed within ``flat`` x (the peak speed since the previous event)
    of the minimum's speed. A flat bottom is one event, at the frame where the motion
    meets the note: the cello at its last frame (the new stroke starts there: a detached
    note's bow rests between notes), the trombone at its first (the slide arrives).

    Chosen on the synthetic performer's ground truth (random melodies and corpus pieces,
    several identities), where they give the highest chance-corrected score; the
    trombone's needs more travel because its hand rests between slide moves while the
    body sways."""

    min_travel: float
    flat: float
    snap_to_end: bool  # True: a flat bottom's last frame; False: its first


EVENT_DETECTORS: dict[str, EventDetector] = {
    "cello": EventDetector(min_travel=0.005, flat=0.05, snap_to_end=True),
    "trombone": EventDetector(min_travel=0.02, flat=0.2, snap_to_end=False),
}


# --------------------------------------------------------------------------- motion sync


def motion_events(kp: np.ndarray, instrument: str) -> np.ndarray:
    """Frames with a motion event of the right wrist in keypoints ``[T, 67, 2]`` -> bool ``[T]``.

    The wrist's track is smoothed lightly (a [1, 2, 1] / 4 filter), its speed taken per
    frame; a frame is an event where the speed has a local minimum and the wrist has
    travelled at least :attr:`EventDetector.min_travel` since the previous event (flat
    bottoms resolved as :class:`EventDetector` says). A still pose has no events; a
    jittering wrist has events at random frames."""
    if instrument not in EVENT_DETECTORS:
        raise ValueError(f"no motion event detector for instrument {instrument!r}; "
                         f"known: {', '.join(EVENT_DETECTORS)}")
    kp = np.asarray(kp)
    if kp.ndim != 3 or kp.shape[1] <= RIGHT_WRIST or kp.shape[2] != 2:
        raise ValueError(f"keypoints must be [T, 67, 2], got {kp.shape}")
    det = EVENT_DETECTORS[instrument]
    w = kp[:, RIGHT_WRIST].astype(np.float64)
    T = len(w)
    ev = np.zeros(T, bool)
    if T < 3:
        return ev
    w[1:-1] = (w[:-2] + 2 * w[1:-1] + w[2:]) / 4
    s = np.empty(T)
    s[1:] = np.linalg.norm(np.diff(w, axis=0), axis=1)  # s[t]: speed between t - 1 and t
    s[0] = s[1]
    travel = np.cumsum(s)
    last, t = 0, 1
    while t < T - 1:
        if s[t] < s[t - 1] and s[t] <= s[t + 1] and travel[t] - travel[last] >= det.min_travel:
            level = s[t] + det.flat * s[last:t + 1].max()
            a = b = t
            while a > last + 1 and s[a - 1] <= level:
                a -= 1
            while b < T - 1 and s[b + 1] <= level:
                b += 1
            e = b if det.snap_to_end else a
            ev[e] = True
            last = e
            t = max(t, e) + 1
            continue
        t += 1
    return ev


def onset_frames(notes: list[Any], fps: float, n_frames: int) -> np.ndarray:
    """Sorted unique onset frames (``round(onset * fps)``) inside ``[0, n_frames)`` of
    notes ``(onset_s, duration_s, pitch, velocity)`` (tuples or objects with ``.onset``)."""
    on = [float(n.onset if hasattr(n, "onset") else n[0]) for n in notes]
    f = np.unique(np.round(np.asarray(on, dtype=np.float64) * fps).astype(np.int64))
    return f[(f >= 0) & (f < n_frames)]


def _matches(events: np.ndarray, onsets: np.ndarray, tol: int) -> tuple[int, int]:
    """(matches, summed |event - onset| of the matched pairs) of the largest one-to-one
    matching of sorted event and onset frames with ``|event - onset| <= tol`` (greedy in
    time order, which is optimal on a line)."""
    i = j = m = off = 0
    while i < len(events) and j < len(onsets):
        if onsets[j] < events[i] - tol:
            j += 1
        elif onsets[j] > events[i] + tol:
            i += 1
        else:
            m, off = m + 1, off + abs(int(events[i]) - int(onsets[j]))
            i, j = i + 1, j + 1
    return m, off


def match_count(events: np.ndarray, onsets: np.ndarray, tol: int) -> int:
    """How many of the sorted ``events`` frames match ``onsets`` frames one to one within
    ``tol`` frames (the largest such matching)."""
    return _matches(np.asarray(events), np.asarray(onsets), tol)[0]


def _f1(matched: float, events: float, onsets: float) -> float:
    return 0.0 if events + onsets == 0 else 2.0 * matched / (events + onsets)


@dataclass(frozen=True)
class SyncCounts:
    """One clip's (or several clips' pooled) matching counts; see :func:`sync_counts`."""

    matched: int  # events matched to onsets at lag 0 (true positives)
    events: int
    onsets: int
    chance_events: int  # events per random draw: ``events``, or ``onsets`` for a hand that never moves
    chance_matched: tuple[int, ...]  # matches of each random draw
    lag_matched: tuple[int, ...]  # matches at each lag in [-max_lag, max_lag]
    lag_offset: tuple[int, ...]  # summed |event - onset| of those matches (the best lag's tie-break)


@dataclass(frozen=True)
class SyncScore:
    """Pooled sync figures (:func:`pool_sync`)."""

    f1: float  # at lag 0
    chance: float  # mean F1 of random event placements
    c: float  # (f1 - chance) / (1 - chance)
    best_lag: int  # frames in [-max_lag, max_lag]; positive = the motion comes after the onset
    f1_best_lag: float
    matched: int
    events: int
    onsets: int


def sync_counts(events: np.ndarray, onsets: np.ndarray, n_frames: int, tolerance: int = SYNC_TOLERANCE,
                max_lag: int = SYNC_MAX_LAG, draws: int = SYNC_CHANCE_DRAWS, seed: int = 0) -> SyncCounts:
    """Match one clip's event frames with its onset frames.

    ``events``: bool ``[n_frames]`` (as from :func:`motion_events`) or event frame
    indices in ``[0, n_frames)``; ``onsets``: onset frames. An event matches at most one
    onset and vice versa, within +-``tolerance`` frames. At lag ``L`` the events are moved
    by ``-L`` frames before matching, so a positive best lag means the motion comes after
    the onset.

    Chance: ``draws`` seeded placements of as many events at random frames of the clip,
    spaced like the scored events -- the gaps between consecutive events (circularly,
    the last to the first around the clip's end) shuffled, and the whole train started
    at a random frame. Keeping the gaps matters: a detector's events never crowd (each
    needs travel since the last), uniformly random frames do, and a hand jittering
    evenly would then beat "chance" by coverage alone. A clip without events is compared
    with random events spaced like its onsets: a hand that never moves scores below chance."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    ev = np.asarray(events)
    if ev.dtype == bool:
        if ev.shape != (n_frames,):
            raise ValueError(f"a bool event mask must have n_frames = {n_frames} entries, got shape {ev.shape}")
        ev = np.flatnonzero(ev)
    ev = np.unique(ev.astype(np.int64))
    if len(ev) and (ev[0] < 0 or ev[-1] >= n_frames):
        raise ValueError(f"event frames must lie in [0, {n_frames}); got {ev[0]}..{ev[-1]}")
    on = np.unique(np.asarray(onsets, dtype=np.int64))
    base = ev if len(ev) else on[(on >= 0) & (on < n_frames)]
    chance: list[int] = []
    if len(base):
        gaps = np.diff(np.append(base, base[0] + n_frames))  # circular gaps, summing to n_frames
        rng = np.random.default_rng(seed)
        for _ in range(draws):
            pos = np.sort((int(rng.integers(n_frames)) + np.cumsum(rng.permutation(gaps))) % n_frames)
            chance.append(_matches(pos, on, tolerance)[0])
    else:
        chance = [0] * draws
    lags = [_matches(ev - lag, on, tolerance) for lag in range(-max_lag, max_lag + 1)]
    return SyncCounts(matched=_matches(ev, on, tolerance)[0], events=len(ev), onsets=len(on),
                      chance_events=len(base), chance_matched=tuple(chance),
                      lag_matched=tuple(m for m, _ in lags), lag_offset=tuple(o for _, o in lags))


def pool_sync(counts: list[SyncCounts]) -> SyncScore | None:
    """Clips' counts -> one score, None when there are no onsets at all.

    Matches, events and onsets are summed over clips and the F1 taken of the sums (so a
    clip weighs by its notes and events). Chance is the mean over draws of the F1 of
    the summed random-draw counts (draw i of every clip together); the best lag is the
    lag whose summed matches give the highest F1; among equal F1 (the tolerance makes
    plateaus) the one whose matched pairs lie closest together, then the smallest |lag|."""
    if not counts or sum(c.onsets for c in counts) == 0:
        return None
    matched, events, onsets = (sum(getattr(c, k) for c in counts) for k in ("matched", "events", "onsets"))
    chance_events = sum(c.chance_events for c in counts)
    draws = np.sum([c.chance_matched for c in counts], axis=0)
    chance = float(np.mean([_f1(m, chance_events, onsets) for m in draws]))
    f1 = _f1(matched, events, onsets)
    lag_m = np.sum([c.lag_matched for c in counts], axis=0)
    max_lag = (len(lag_m) - 1) // 2
    f1_lag = np.array([_f1(m, events, onsets) for m in lag_m])
    lags = np.arange(-max_lag, max_lag + 1)
    offset = np.sum([c.lag_offset for c in counts], axis=0) / np.maximum(lag_m, 1)
    best = int(np.lexsort((np.abs(lags), offset, -f1_lag))[0])
    c = (f1 - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    return SyncScore(f1=f1, chance=chance, c=float(c), best_lag=int(lags[best]), f1_best_lag=float(f1_lag[best]),
                     matched=matched, events=events, onsets=onsets)


def score_events(events: np.ndarray, onsets: np.ndarray, n_frames: int, **kw: Any) -> SyncScore | None:
    """:func:`pool_sync` of one clip's :func:`sync_counts` (same keywords)."""
    return pool_sync([sync_counts(events, onsets, n_frames, **kw)])
