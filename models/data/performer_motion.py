"""How the synthetic performer moves: the physics of playing, as exact 67-point keypoints.

The performer is a 2D kinematic figure whose every bone (each edge of
:data:`letsplay.models.skeleton.EDGES`) keeps its length for a whole clip: the rest
pose is a 3D layout projected once (a slight turn of the body, a camera looking a
little down), the upper body and head then only *rotate* (sway, nods, leaning into
accents), arms reach their targets by two-bone inverse kinematics with fixed bone
lengths, and hands are forward kinematics with fixed phalanx lengths. The drawing
(:mod:`letsplay.models.data.performer_render`) is made from these keypoints, so the
keypoints are the figure, not an estimate of it.

Cello (seated, cello between the knees, bow in the right hand):

* string choice and stop position from pitch (:func:`cello_fingering`): the stop's
  distance from the nut is ``1 - 2**(-n/12)`` of the string, monotone in pitch on each
  string; the left hand moves to the next stop just before the note's onset; open
  strings leave the hand where it was;
* the bow reverses direction at every note onset (one bow stroke per note, no slurs, the
  first a down-bow), moves at a speed that grows with the note's velocity, slows as it
  nears the end of the bow (:func:`bow_travel`: causal -- where the bow is depends on the
  notes heard so far, never on when a note will end) and rests where the note ends;
* after a rest of :data:`BOW_RETAKE_S` or more the player retakes the bow, as cellists
  do: once the silence has lasted that long the bow glides back toward
  :data:`BOW_RETAKE_AT` (:func:`bow_retake_glide`), and the next note starts a down-bow
  from wherever the glide has brought it -- causal too (the glide begins only when the
  rest has lasted long enough to be a rest);
* the bow arm's angle follows the string being played (the C string is played with the
  arm high, the A string with the arm low), changing just before the onset;
* vibrato on sustained stopped notes rolls the finger along the string by exactly the
  distance that bends the pitch by :func:`vibrato_semitones` (the audio uses the same).

Trombone (standing, turned a little to its right, slide in the right hand):

* slide position from pitch via :data:`TROMBONE_POSITIONS`; the slide's extension
  follows the tube length (:func:`slide_extension_cm`); the slide moves to the next
  note's position just before the onset and holds it while the note sounds;
* the bell lifts a little with loudness; the left hand holds the instrument at the lips.

Both sway slowly, lean into loud onsets, and nod; the amounts vary with the identity. The
slow sway and part of the nod are the performer's **idle motion**: they follow the clock
from the clip's first frame (each identity's own frequencies and phases), not the music,
so no audio carries them; ``perform(..., idle=False)`` leaves them out (what the notes drive
stays), which :mod:`letsplay.models.limits` uses to tell the two apart.

The instrument's own points (:data:`letsplay.models.skeleton.INSTRUMENT_POINTS`: bow frog
and tip, endpin, bridge, scroll; mouthpiece, bell, slide crook) are computed here from the
same geometry the renderer draws the instrument from (:attr:`Performance.instrument_points`),
so they are exact too.

Units: centimetres, y up, origin on the floor under the hips ("world"); :func:`perform`
maps to pixels and to normalised keypoints.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from letsplay.models.data.expression import Vibrato, vibrato_semitones
from letsplay.models.data.instruments import (
    CELLO_STRING_CM,
    CELLO_STRINGS,
    cello_stop_fraction,
    cello_string_for,
    get_instrument,
    slide_extension_cm,
    trombone_position,
)
from letsplay.models.data.scores import Note
from letsplay.models.skeleton import LEFT_HAND, N_KEYPOINTS, RIGHT_HAND, instrument_point_names
from letsplay.models.spec import VideoSpec

CELLO_VIBRATO = Vibrato()
BOW_HAIR_CM = 60.0  # usable bow: contact point runs from BOW_LO to BOW_HI along the hair
BOW_LO, BOW_HI = 8.0, 50.0
BOW_STICK_CM = 72.0
SLIDE_FORESHORTEN = 0.7  # the slide points partly toward the camera

# Instrument drawing coordinates shared with the renderer (body-cm; the cello's along its
# axis before CELLO_T_SHIFT, the trombone's along the slide from the lips / up from it).
CELLO_BRIDGE_T = 55.0
CELLO_SCROLL_T = 138.5
TROMBONE_MOUTHPIECE_ALONG = 2.0  # the mouthpiece tube runs from 1 to 3 cm
TROMBONE_BELL_AT = 62.0 * SLIDE_FORESHORTEN  # the bell's rim along the slide direction
TROMBONE_BELL_UP = 6.5  # the bell's axis above the slide
SLIDE_OUTER_CM = 62.0 * SLIDE_FORESHORTEN  # outer slide tubes, foreshortened
SLIDE_CROOK_DEPTH = 2.5  # the crook bulges this far beyond the outer tubes' ends
SLIDE_TUBES_UP = (0.0, -5.0)  # the two slide tubes, up from the slide axis


def slide_outer_span(reach: float | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
    """(start, end) of the outer slide tubes along the slide, body-cm from the lips, for the
    hand's ``reach`` (body-cm): the brace sits just ahead of the hand, the crook at the end."""
    outer0 = reach - 3.0
    return outer0, outer0 + SLIDE_OUTER_CM


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Body:
    """A performer's proportions, framing and motion style, drawn from a seed."""

    seed: int
    instrument: str
    size: float  # overall body scale (1 = 175 cm adult)
    arm: float  # arm length factor on top of size
    hand: float  # hand size factor on top of size
    yaw: float  # radians the body is turned toward its right (image left)
    cam_pitch: float  # radians the camera looks down
    zoom: float  # preferred framing zoom (1 = the figure fills the frame)
    shift_x: float  # preferred horizontal offset, fraction of the free margin (-1..1)
    sway_deg: float  # slow upper-body sway amplitude
    sway_hz: tuple[float, float]
    sway_phase: tuple[float, float]
    nod_deg: float  # head nod amplitude
    lean_deg: float  # lean into loud onsets
    tilt_deg: float  # cello: lean of the instrument; trombone: slide below horizontal
    bow_lean_deg: float = 3.0  # cello: the upper body turns toward the bow hand by this much at the tip

    @classmethod
    def from_seed(cls, seed: int, instrument: str) -> Body:
        get_instrument(instrument)
        r = np.random.default_rng([int(seed), 0xB0D1])
        cello = instrument == "cello"
        return cls(
            seed=int(seed), instrument=instrument,
            size=float(r.uniform(0.92, 1.06)), arm=float(r.uniform(0.96, 1.05)), hand=float(r.uniform(0.92, 1.08)),
            yaw=math.radians(float(r.uniform(-8, 14)) if cello else float(r.uniform(30, 44))),
            cam_pitch=math.radians(float(r.uniform(6, 16))),
            zoom=float(r.uniform(0.88, 1.0)), shift_x=float(r.uniform(-0.6, 0.6)),
            sway_deg=float(r.uniform(0.8, 2.2)), sway_hz=(float(r.uniform(0.12, 0.3)), float(r.uniform(0.3, 0.6))),
            sway_phase=(float(r.uniform(0, 2 * np.pi)), float(r.uniform(0, 2 * np.pi))),
            nod_deg=float(r.uniform(1.0, 4.0)), lean_deg=float(r.uniform(0.8, 2.5)),
            tilt_deg=float(r.uniform(7, 12)) if cello else float(r.uniform(14, 24)),
            bow_lean_deg=float(r.uniform(2.5, 3.5)) if cello else 0.0,
        )

    # bone lengths (cm)
    @property
    def upper_arm(self) -> float:
        return 27.5 * self.size * self.arm

    @property
    def forearm(self) -> float:
        return 27.5 * self.size * self.arm


# --------------------------------------------------------------------------- small geometry


def _rot(v: np.ndarray, ang: np.ndarray | float) -> np.ndarray:
    """Rotate 2D vectors v[..., 2] counter-clockwise by ang (radians, broadcast over leading dims)."""
    c, s = np.cos(ang), np.sin(ang)
    x, y = v[..., 0], v[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1)


def _about(p: np.ndarray, pivot: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Rotate points p[T, ..., 2] about pivot[T, 2] by ang[T]."""
    extra = p.ndim - pivot.ndim
    pv = pivot.reshape(pivot.shape[:1] + (1,) * extra + (2,))
    a = ang.reshape(ang.shape + (1,) * extra)
    return pv + _rot(p - pv, a)


def _unit(ang: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(ang), np.sin(ang)], axis=-1)


def ease(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


_STRAIGHT_ARM = np.radians(3.0)  # elbow angle below which the arm counts as straight (its two elbows meet)


def two_bone_ik(root: np.ndarray, target: np.ndarray, a: float, b: float,
                pole: np.ndarray | tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and wrist for a two-bone arm of lengths a, b from ``root`` toward ``target``
    ([T, 2] each). Of the two mirror-image elbows, the one nearer ``root + pole`` is taken
    (``pole``: a direction, e.g. "down and out") at the first frame; after it the elbow
    keeps its side (a real arm's elbow cannot jump to its mirror image between two frames)
    and takes the pole's side again only where the arm is straight, where the two
    solutions meet, so the elbow's track is continuous whatever the target does. Rows of
    ``root`` / ``target`` are consecutive frames. Unreachable targets are approached as
    closely as the bones allow; both bone lengths are exact in every case."""
    d = target - root
    dist = np.linalg.norm(d, axis=-1)
    lo, hi = abs(a - b) + 1e-3, a + b - 1e-3
    dist_c = np.clip(dist, lo, hi)
    theta = np.arctan2(d[..., 1], d[..., 0])
    cos_b = np.clip((a * a + dist_c**2 - b * b) / (2 * a * dist_c), -1.0, 1.0)
    beta = np.arccos(cos_b)
    e1 = root + a * _unit(theta + beta)
    e2 = root + a * _unit(theta - beta)
    p = root + 100.0 * np.asarray(pole, dtype=float)
    take1 = np.linalg.norm(e1 - p, axis=-1) <= np.linalg.norm(e2 - p, axis=-1)
    if take1.ndim == 1 and len(take1) > 1:
        # the side chosen at frame 0 and at each straight-arm frame holds until the next one
        n = np.arange(len(take1))
        free = (beta < _STRAIGHT_ARM) | (n == 0)
        take1 = take1[np.maximum.accumulate(np.where(free, n, 0))]
    elbow = np.where(take1[..., None], e1, e2)
    wrist = root + dist_c[..., None] * _unit(theta)
    return elbow, wrist


def keyframes(t: np.ndarray, onsets: np.ndarray, values: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """Piecewise-constant ``values[i]`` from ``onsets[i]``, with an eased move from the
    previous value during the ``lead[i]`` seconds that end at ``onsets[i]``.

    t [T], onsets [N] sorted, values [N, D], lead [N] -> [T, D]. Before the first onset: values[0]."""
    n = len(onsets)
    k = np.searchsorted(onsets, t, side="right") - 1
    cur = values[np.clip(k, 0, n - 1)]
    j = k + 1
    has_next = j < n
    jj = np.clip(j, 0, n - 1)
    start = onsets[jj] - lead[jj]
    w = np.where(has_next, ease((t - start) / np.maximum(lead[jj], 1e-6)), 0.0)
    return cur + w[:, None] * (values[jj] - cur)


def _transition_leads(notes: Sequence[Note], longest: float, share: float = 0.5) -> np.ndarray:
    """Seconds before each onset a hand starts moving to it: at most ``longest``, at most
    ``share`` of the time since the previous onset."""
    on = np.array([n.onset for n in notes])
    ioi = np.diff(on, prepend=on[0] - 2 * longest) if len(on) else on
    return np.clip(share * ioi, 0.02, longest)


def _accent_envelope(notes: Sequence[Note], t: np.ndarray, peak_s: float = 0.15) -> np.ndarray:
    """Sum over loud onsets of a bump peaking ``peak_s`` after the onset (0..~1)."""
    out = np.zeros_like(t)
    for n in notes:
        w = max(0.0, (n.velocity - 70) / 57.0)
        if w <= 0:
            continue
        i0, i1 = np.searchsorted(t, [n.onset, n.onset + 8 * peak_s])
        tau = (t[i0:i1] - n.onset) / peak_s
        out[i0:i1] += w * tau * np.exp(1.0 - tau)
    return np.minimum(out, 1.5)


def _loudness(notes: Sequence[Note], t: np.ndarray, smooth_s: float = 0.4) -> np.ndarray:
    """The sounding velocity (0..1), smoothed over ~``smooth_s``; 0 in silence."""
    v = np.zeros_like(t)
    for n in notes:
        i0, i1 = np.searchsorted(t, [n.onset, n.end])
        v[i0:i1] = n.velocity / 127.0
    if len(t) > 1:
        dt = float(t[1] - t[0])
        k = max(1, int(smooth_s / dt))
        ker = np.hanning(2 * k + 1)
        v = np.convolve(np.pad(v, k, mode="edge"), ker / ker.sum(), mode="valid")
    return v


# --------------------------------------------------------------------------- hands

# Hand model, local frame: x from the wrist toward the knuckles, y toward the thumb side.
# Per finger (thumb, index, middle, ring, pinky): base point (CMC/MCP) from the wrist,
# three phalanx lengths, base direction (deg).
_HAND_BASE = np.array([[2.4, 2.0], [8.2, 2.3], [8.5, 0.5], [8.1, -1.2], [7.4, -2.8]])
_HAND_BONES = np.array([[3.6, 3.1, 2.6], [4.1, 2.5, 1.9], [4.5, 2.8, 2.0], [4.2, 2.6, 1.9], [3.4, 2.0, 1.8]])
_HAND_DIR = np.radians([42.0, 8.0, 0.0, -7.0, -15.0])


def hand_points(flex: np.ndarray, scale: float, thumb_dir: float | None = None) -> np.ndarray:
    """The 21 hand points in the local frame. flex [..., 5, 3]: joint bend angles (rad,
    positive curls toward -y) -> [..., 21, 2]. Bone lengths depend only on ``scale``."""
    lead = flex.shape[:-2]
    out = np.zeros(lead + (21, 2))
    dirs = _HAND_DIR.copy()
    if thumb_dir is not None:
        dirs[0] = thumb_dir
    for f in range(5):
        p = np.broadcast_to(_HAND_BASE[f] * scale, lead + (2,))
        out[..., 1 + 4 * f, :] = p
        ang = np.full(lead, dirs[f])
        for j in range(3):
            ang = ang - flex[..., f, j]
            p = p + _HAND_BONES[f, j] * scale * _unit(ang)
            out[..., 2 + 4 * f + j, :] = p
    return out


_MIRROR = np.array([1.0, -1.0])  # local hand points seen from the palm side: thumb side flipped


def place_hand(local: np.ndarray, wrist: np.ndarray, angle: np.ndarray, mirror: bool) -> np.ndarray:
    """Local hand points [T, 21, 2] -> world, rotating by ``angle`` [T] about the wrist [T, 2];
    ``mirror`` flips the thumb side (a hand seen from the palm instead of the back)."""
    loc = local * _MIRROR if mirror else local
    return wrist[:, None, :] + _rot(loc, angle[:, None])


# --------------------------------------------------------------------------- the rest pose


def _project(body: Body, p3: np.ndarray) -> np.ndarray:
    """Body-frame 3D points (x right, y up, z toward the camera) -> 2D world (turned by yaw,
    seen by a camera pitched down)."""
    c, s = math.cos(body.yaw), math.sin(body.yaw)
    x = p3[..., 0] * c - p3[..., 2] * s
    z = p3[..., 0] * s + p3[..., 2] * c
    y = p3[..., 1] * math.cos(body.cam_pitch) - z * math.sin(body.cam_pitch)
    return np.stack([x, y], axis=-1)


def _rest_pose(body: Body) -> np.ndarray:
    """Static BODY_25 layout [25, 2] in world cm (arms filled in later)."""
    k = body.size
    seated = body.instrument == "cello"
    P = np.zeros((25, 3))
    if seated:
        hip_y = 57.0 * k
        P[8] = (0, hip_y, 0)
        P[9], P[12] = (-10 * k, hip_y, 0), (10 * k, hip_y, 0)
        P[10], P[13] = (-24 * k, hip_y - 2 * k, 40 * k), (24 * k, hip_y - 2 * k, 40 * k)
        P[11], P[14] = (-28 * k, 9 * k, 44 * k), (28 * k, 9 * k, 44 * k)
        P[24], P[21] = (-28 * k, 3 * k, 40 * k), (28 * k, 3 * k, 40 * k)  # heels
        P[22], P[19] = (-25 * k, 1 * k, 58 * k), (25 * k, 1 * k, 58 * k)  # big toes
        P[23], P[20] = (-32 * k, 1 * k, 56 * k), (32 * k, 1 * k, 56 * k)  # small toes
        neck_y = hip_y + 50 * k
    else:
        hip_y = 95.0 * k
        P[8] = (0, hip_y, 0)
        P[9], P[12] = (-9 * k, hip_y, 0), (9 * k, hip_y, 0)
        P[10], P[13] = (-10 * k, 50 * k, 3 * k), (10 * k, 50 * k, 3 * k)
        P[11], P[14] = (-11 * k, 8 * k, 0), (11 * k, 8 * k, 0)
        P[24], P[21] = (-11 * k, 2 * k, -5 * k), (11 * k, 2 * k, -5 * k)
        P[22], P[19] = (-9 * k, 0.5 * k, 15 * k), (9 * k, 0.5 * k, 15 * k)
        P[23], P[20] = (-15 * k, 0.5 * k, 13 * k), (15 * k, 0.5 * k, 13 * k)
        neck_y = hip_y + 52 * k
    P[1] = (0, neck_y, 0)
    P[2], P[5] = (-19 * k, neck_y - 2 * k, 0), (19 * k, neck_y - 2 * k, 0)
    P[0] = (0, neck_y + 16 * k, 10 * k)  # nose
    P[15], P[16] = (-3.3 * k, neck_y + 19.5 * k, 8 * k), (3.3 * k, neck_y + 19.5 * k, 8 * k)  # eyes
    P[17], P[18] = (-7.8 * k, neck_y + 18 * k, 0), (7.8 * k, neck_y + 18 * k, 0)  # ears
    return _project(body, P)


def _mouth_rest(body: Body) -> np.ndarray:
    k = body.size
    neck_y = (95.0 + 52) * k if body.instrument != "cello" else (57.0 + 50) * k
    return _project(body, np.array([0.0, neck_y + 11.5 * k, 9.5 * k]))


# --------------------------------------------------------------------------- cello


@dataclass(frozen=True)
class CelloFingering:
    """Per note: string (0 = C .. 3 = A), semitones above the open string, pressing finger
    (0 = open string, 1 = index .. 4 = little finger), stop fraction from the nut."""

    string: np.ndarray
    semitones: np.ndarray
    finger: np.ndarray
    stop: np.ndarray


def cello_fingering(notes: Sequence[Note]) -> CelloFingering:
    strings, semis, fingers, stops = [], [], [], []
    prev = None
    for n in notes:
        s = cello_string_for(n.pitch, prev)
        k = n.pitch - CELLO_STRINGS[s]
        strings.append(s)
        semis.append(k)
        fingers.append(0 if k == 0 else 1 + (k - 1) % 4)
        stops.append(cello_stop_fraction(n.pitch, s))
        prev = s
    return CelloFingering(np.array(strings, int), np.array(semis, int), np.array(fingers, int), np.array(stops))


def cello_vibrato_allowed(notes: Sequence[Note]) -> np.ndarray:
    """Vibrato needs a stopped string: open-string notes get none."""
    return cello_fingering(notes).semitones > 0 if notes else np.zeros(0, bool)


# Cello geometry along its axis (cm from the endpin's floor point); the renderer draws the
# instrument at the same places (its drawing coordinates plus CELLO_T_SHIFT, the endpin setting).
CELLO_T_SHIFT = -8.0
_T_BRIDGE = CELLO_BRIDGE_T + CELLO_T_SHIFT
_T_NUT = _T_BRIDGE + CELLO_STRING_CM
_NUT_SPACING, _BRIDGE_SPACING = 0.9, 2.0  # cm between strings
_BOW_CONTACT = 0.9  # fraction of the string from the nut where the bow plays
_BOW_TILT = np.radians([-15.0, -5.0, 5.0, 13.0])  # C, G, D, A: bow angle from square


_BOW_ATTACK_S = 0.05  # a stroke's speed builds up over about this long after the onset
_BOW_MARGIN = 0.97  # share of the bow left toward its end that a stroke may use
# The bow retake: a silence at least this long (s) after the last note's end is a rest, after
# which the bow glides back toward BOW_RETAKE_AT (cm from the frog, the lower third of the hair)
# with this time constant (s), and the next note starts a down-bow. KHP's rest state follows
# the same rule (letsplay.models.keypoints).
BOW_RETAKE_S = 0.3
BOW_RETAKE_AT = 20.0
BOW_RETAKE_TAU_S = 0.12


def bow_retake_glide(b: np.ndarray | float, rest: np.ndarray | float) -> np.ndarray:
    """Where a bow resting at ``b`` (cm) is after ``rest`` seconds of silence: still until
    the silence has lasted :data:`BOW_RETAKE_S`, then gliding back toward
    :data:`BOW_RETAKE_AT`, exponentially (time constant :data:`BOW_RETAKE_TAU_S`), so the
    glide from any point on is the same rule (a frame-by-frame state can follow it exactly)."""
    since = np.maximum(np.asarray(rest, dtype=np.float64) - BOW_RETAKE_S, 0.0)
    return BOW_RETAKE_AT + (np.asarray(b, dtype=np.float64) - BOW_RETAKE_AT) * np.exp(-since / BOW_RETAKE_TAU_S)


def bow_speed(velocity: int) -> float:
    """The bow speed (cm/s) a note is played with: louder is faster."""
    return 12.0 + 60.0 * ((velocity - 30) / 97.0) ** 1.3 if velocity > 30 else 12.0


def bow_travel(tau: np.ndarray | float, speed: np.ndarray | float, room: np.ndarray | float) -> np.ndarray:
    """Bow travelled (cm) ``tau`` seconds into a stroke at ``speed`` toward a bow end
    ``room`` cm away: the speed builds up over ~``_BOW_ATTACK_S``, and the stroke slows
    smoothly as the end nears and never passes it.

    Causal: the position at ``tau`` depends only on the stroke so far (its onset, speed
    and starting point), never on when the note will end -- so the motion can be
    followed from the sound as it is heard, which is what the renderer learns to do."""
    tau = np.maximum(np.asarray(tau, dtype=np.float64), 0.0)
    g = tau - _BOW_ATTACK_S * (1.0 - np.exp(-tau / _BOW_ATTACK_S))  # g' rises 0 -> 1
    return room * (1.0 - np.exp(-speed * g / room))


def _bow_strokes(notes: Sequence[Note]) -> tuple[np.ndarray, ...]:
    """Per note: start position, direction, distance, speed and room (see plan_bow)."""
    start, direction, dist, speed, room = [], [], [], [], []
    b = 0.5 * (BOW_LO + BOW_HI)
    d = -1.0
    heard = 0.0  # when the last sound ended (the clip begins in silence)
    for n in notes:
        gap = n.onset - heard
        if gap >= BOW_RETAKE_S:  # a rest: the bow was retaken, a down-bow from where the glide brought it
            b = float(bow_retake_glide(b, gap))
            d = 1.0
        else:
            d = -d
        v = bow_speed(n.velocity)
        r = _BOW_MARGIN * ((BOW_HI - b) if d > 0 else (b - BOW_LO))
        D = float(bow_travel(n.duration, v, r))
        start.append(b)
        direction.append(d)
        dist.append(D)
        speed.append(v)
        room.append(r)
        b = b + d * D
        heard = max(heard, n.end)
    return tuple(np.array(x) for x in (start, direction, dist, speed, room))


def plan_bow(notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stroke per note, alternating direction, the first a down-bow from the middle of
    the bow, and a down-bow after every rest (the bow retaken, :func:`bow_retake_glide`).
    Returns per note (start position, direction +1 down-bow / -1 up-bow, distance
    travelled by the note's end) in cm of bow."""
    start, direction, dist, _, _ = _bow_strokes(notes)
    return start, direction, dist


def bow_position(notes: Sequence[Note], t: np.ndarray) -> np.ndarray:
    """Contact point along the bow hair (cm from the frog) at times t: each stroke
    travels at its speed from its onset (:func:`bow_travel`) and rests where the note ends."""
    t = np.asarray(t, dtype=np.float64)
    before = bow_retake_glide(np.full_like(t, 0.5 * (BOW_LO + BOW_HI)), t)  # mid-bow, retaken in the silence
    if not notes:
        return before
    start, direction, _, speed, room = _bow_strokes(notes)
    on = np.array([n.onset for n in notes])
    dur = np.array([n.duration for n in notes])
    heard = np.maximum.accumulate(on + dur)  # when the sound of the notes begun so far ends
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.clip(k, 0, len(notes) - 1)
    tau = np.clip(t - on[kk], 0.0, dur[kk])
    room_k = np.maximum(room[kk], 1e-9)
    b = start[kk] + direction[kk] * bow_travel(tau, speed[kk], room_k)
    b = np.where(t > heard[kk], bow_retake_glide(b, t - heard[kk]), b)  # in a rest: the retake's glide
    return np.where(k < 0, before, b)


@dataclass
class Performance:
    """A clip's motion: normalised keypoints, physics state and instrument geometry per frame."""

    times: np.ndarray  # [T] seconds
    keypoints: np.ndarray  # [T, 67, 2] x = col / width, y = row / height
    world: np.ndarray  # [T, 67, 2] the same points in world cm (y up)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # physics per frame
    geometry: dict[str, np.ndarray] = field(default_factory=dict)  # instrument points in pixels per frame
    px_per_cm: float = 1.0
    # [T, K, 2] the instrument's points (skeleton.instrument_point_names), normalised like
    # ``keypoints``; exact, and may lie outside [0, 1] (a bow tip beyond the frame's edge)
    instrument_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2), np.float32))


def _upper_body_motion(body: Body, notes: Sequence[Note], t: np.ndarray,
                       idle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sway, nod) angles in radians, [T] each. ``idle=False``: without the terms that follow
    the clock (the slow sway, the nod's slow swing), only what the notes drive."""
    acc = _accent_envelope(notes, t)
    f1, f2 = body.sway_hz
    p1, p2 = body.sway_phase
    on = 1.0 if idle else 0.0
    sway = on * body.sway_deg * (0.65 * np.sin(2 * np.pi * f1 * t + p1) + 0.35 * np.sin(2 * np.pi * f2 * t + p2))
    sway = sway - body.lean_deg * acc
    nod = body.nod_deg * (on * 0.4 * np.sin(2 * np.pi * 0.5 * f2 * t + p1) + 0.8 * acc - 0.3)
    return np.radians(sway), np.radians(nod)


def _cello(body: Body, notes: Sequence[Note], t: np.ndarray, sway: np.ndarray, nod: np.ndarray,
           rest: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    T = len(t)
    k = body.size
    # the player leans into the bow: toward the bow hand as it nears the tip
    b = bow_position(notes, t)
    sway = sway + np.radians(body.bow_lean_deg) * (b - 0.5 * (BOW_LO + BOW_HI)) / (0.5 * (BOW_HI - BOW_LO))
    W = np.zeros((T, 67, 2))
    W[:, :25] = rest
    hip = np.broadcast_to(rest[8], (T, 2))
    upper = [0, 1, 2, 5, 15, 16, 17, 18]
    W[:, upper] = _about(W[:, upper], hip, sway)
    head = [0, 15, 16, 17, 18]
    W[:, head] = _about(W[:, head], W[:, 1], nod)

    # the cello: endpin on the floor, leaning toward the player's left shoulder, moving a
    # little with the upper body
    endpin = np.array([3.0 * k, 0.0])
    tau = np.radians(body.tilt_deg) + 0.7 * sway  # from vertical, toward image right
    axis = np.stack([np.sin(tau), np.cos(tau)], axis=-1)  # [T, 2] up the neck
    across = np.stack([np.cos(tau), -np.sin(tau)], axis=-1)  # toward image right (the C string side)

    def point(tt: float | np.ndarray, lateral: float | np.ndarray) -> np.ndarray:
        tt = np.asarray(tt, dtype=float)
        lat = np.asarray(lateral, dtype=float)
        return endpin + axis * (tt * k)[..., None] + across * (lat * k)[..., None]

    def on_string(lat_index: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Point on the (possibly fractional) string index at a fraction from the nut."""
        off_nut = (1.5 - lat_index) * _NUT_SPACING
        off_bridge = (1.5 - lat_index) * _BRIDGE_SPACING
        nut = point(np.full(T, _T_NUT), off_nut)
        bridge = point(np.full(T, _T_BRIDGE), off_bridge)
        return nut + (bridge - nut) * frac[:, None]

    on = np.array([n.onset for n in notes]) if notes else np.zeros(1)
    fing = cello_fingering(notes) if notes else CelloFingering(np.array([2]), np.array([2]), np.array([1]),
                                                               np.array([cello_stop_fraction(52, 2)]))
    # ---- left hand: keyframes (string index, stop fraction, finger weights); open strings hold
    n_notes = len(on)
    lat = np.zeros(n_notes)
    frac = np.zeros(n_notes)
    press = np.zeros((n_notes, 4))
    last = (2.0, cello_stop_fraction(52, 2), 1)  # first position on the D string, index finger
    first_stopped = next((i for i in range(n_notes) if fing.semitones[i] > 0), None)
    if first_stopped is not None:
        last = (float(fing.string[first_stopped]), float(fing.stop[first_stopped]), int(fing.finger[first_stopped]))
    for i in range(n_notes):
        if fing.semitones[i] > 0:
            last = (float(fing.string[i]), float(fing.stop[i]), int(fing.finger[i]))
        lat[i], frac[i] = last[0], last[1]
        press[i] = 0.0
        press[i, last[2] - 1] = 1.0
    lead = _transition_leads(notes, 0.09) if notes else np.array([0.05])
    lh = keyframes(t, on, np.concatenate([lat[:, None], frac[:, None], press], axis=1), lead)
    lat_t, frac_t, press_t = lh[:, 0], lh[:, 1], lh[:, 2:]
    # vibrato: roll the stop by the distance that bends the pitch by the vibrato
    allowed = fing.semitones > 0
    vib = vibrato_semitones(notes, t, CELLO_VIBRATO, allowed) if notes else np.zeros(T)
    frac_v = 1.0 - (1.0 - frac_t) * 2.0 ** (-vib / 12.0)
    stop = on_string(lat_t, frac_v)

    # left hand shape: pressing finger curled onto the string, the others hovering
    hover = np.radians([[10, 20, 15], [25, 35, 25], [22, 35, 25], [20, 35, 25], [18, 35, 25]])
    pressed = np.radians([[10, 20, 15], [30, 50, 35], [30, 50, 35], [30, 50, 35], [30, 50, 35]])
    flex = hover[None] + np.concatenate([np.zeros((T, 1)), press_t], axis=1)[..., None] * (pressed - hover)[None]
    hs = body.size * body.hand
    local = hand_points(flex, hs)
    tips = local[:, [8, 12, 16, 20]]  # [T, 4, 2]
    wsum = press_t.sum(axis=1, keepdims=True)
    anchor = (tips * press_t[..., None]).sum(axis=1) / np.maximum(wsum, 1e-6)
    # hand frame: knuckles point across the fingerboard toward image left, thumb side toward the nut
    lh_ang = np.arctan2(-across[:, 1], -across[:, 0]) + np.radians(12)
    rot_anchor = _rot(anchor * np.array([1.0, 1.0]), lh_ang)
    l_wrist_target = stop - rot_anchor
    l_elbow, l_wrist = two_bone_ik(W[:, 5], l_wrist_target, body.upper_arm, body.forearm, pole=(0.3, -1.0))
    W[:, 6], W[:, 7] = l_elbow, l_wrist
    W[:, LEFT_HAND.start:LEFT_HAND.stop] = place_hand(local, l_wrist, lh_ang, mirror=False)

    # ---- bow: string (tilt and contact) keyframed before each onset, position per stroke
    bow_string = fing.string.astype(float) if notes else np.array([2.0])
    blead = _transition_leads(notes, 0.06) if notes else np.array([0.05])
    bs = keyframes(t, on, bow_string[:, None], blead)[:, 0]
    tilt = np.interp(bs, np.arange(4), _BOW_TILT)
    u_ang = np.arctan2(across[:, 1], across[:, 0]) + tilt  # frog -> tip
    u = _unit(u_ang)
    contact = on_string(bs, np.full(T, _BOW_CONTACT))
    frog = contact - u * b[:, None]
    # bow hold: knuckles above the stick, fingers draped over it, thumb under the frog
    grip_flex = np.radians([[10, 25, 30], [35, 40, 30], [40, 45, 30], [40, 45, 30], [30, 40, 35]])
    r_local = hand_points(np.broadcast_to(grip_flex, (T, 5, 3)), hs, thumb_dir=math.radians(-10))
    grip = 0.5 * (r_local[:, 10] + r_local[:, 4])  # the stick runs between middle finger and thumb
    rh_ang = u_ang - np.radians(65)
    r_wrist_target = frog - _rot(grip, rh_ang)
    r_elbow, r_wrist = two_bone_ik(W[:, 2], r_wrist_target, body.upper_arm, body.forearm, pole=(-0.97, -0.25))
    W[:, 3], W[:, 4] = r_elbow, r_wrist
    W[:, RIGHT_HAND.start:RIGHT_HAND.stop] = place_hand(r_local, r_wrist, rh_ang, mirror=False)
    frog_actual = r_wrist + _rot(grip, rh_ang)  # == frog when the arm reaches

    bowing = np.zeros(T, bool)
    for n in notes:
        i0, i1 = np.searchsorted(t, [n.onset, n.end])
        bowing[i0:i1] = True
    state = {
        "string": np.rint(bs).astype(np.int8), "stop_fraction": frac_t, "stop_fraction_vibrato": frac_v,
        "bow_position": b, "bow_string": bs, "bowing": bowing, "vibrato_semitones": vib,
        "finger_weights": press_t, "sway": sway,
        "left_reach_error": np.linalg.norm(l_wrist - l_wrist_target, axis=-1),
        "right_reach_error": np.linalg.norm(r_wrist - r_wrist_target, axis=-1),
    }
    geo = {
        "endpin": np.broadcast_to(endpin, (T, 2)).copy(), "axis": axis, "across": across,
        "frog": frog_actual, "bow_dir": u,
        "nut_l": point(np.full(T, _T_NUT), 1.5 * _NUT_SPACING * 1.6),
        "nut_r": point(np.full(T, _T_NUT), -1.5 * _NUT_SPACING * 1.6),
        "strings_nut": np.stack([point(np.full(T, _T_NUT), (1.5 - s) * _NUT_SPACING) for s in range(4)], 1),
        "strings_bridge": np.stack([point(np.full(T, _T_BRIDGE), (1.5 - s) * _BRIDGE_SPACING)
                                    for s in range(4)], 1),
        "stop": stop,
        # the instrument points (INSTRUMENT_POINTS["cello"]), drawn from exactly these
        "bow_frog": frog_actual, "bow_tip": frog_actual + u * (BOW_STICK_CM * k),
        "bridge": point(np.full(T, _T_BRIDGE), np.zeros(T)),
        "scroll": point(np.full(T, CELLO_SCROLL_T + CELLO_T_SHIFT), np.zeros(T)),
    }
    return W, state, geo


# --------------------------------------------------------------------------- trombone

_SLIDE_GRIP0 = 24.0  # cm from the mouthpiece to the slide brace in first position
_SLIDE_INNER = 66.0  # inner slide length from the mouthpiece (cm, before foreshortening)


def slide_timeline(notes: Sequence[Note], t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slide position 1..7 as a float, extension in cm) at times t; the slide reaches each
    note's position at its onset, moving during the lead before it."""
    if not notes:
        return np.ones_like(t), np.zeros_like(t)
    on = np.array([n.onset for n in notes])
    pos = np.array([trombone_position(n.pitch) for n in notes], float)
    ext = np.array([slide_extension_cm(p) for p in pos])
    lead = _transition_leads(notes, 0.09)
    v = keyframes(t, on, np.stack([pos, ext], axis=1), lead)
    return v[:, 0], v[:, 1]


def _trombone(body: Body, notes: Sequence[Note], t: np.ndarray, sway: np.ndarray, nod: np.ndarray,
              rest: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    T = len(t)
    k = body.size
    W = np.zeros((T, 67, 2))
    W[:, :25] = rest
    hip = np.broadcast_to(rest[8], (T, 2))
    upper = [0, 1, 2, 5, 15, 16, 17, 18]
    W[:, upper] = _about(W[:, upper], hip, sway * 0.6)
    head = [0, 15, 16, 17, 18]
    W[:, head] = _about(W[:, head], W[:, 1], nod)
    mouth = np.broadcast_to(_mouth_rest(body), (T, 2))
    mouth = _about(_about(mouth[:, None], hip, sway * 0.6), W[:, 1], nod)[:, 0]

    loud = _loudness(notes, t)
    # slide direction: forward (image left) and down; the bell lifts with loudness and nods with the head
    down = np.radians(body.tilt_deg) - np.radians(6.0) * loud + nod
    d = np.stack([-np.cos(down), -np.sin(down)], axis=-1)  # along the slide, away from the player
    nrm = _rot(d, -np.pi / 2)  # perpendicular, toward the bell side (up)
    pos, ext = slide_timeline(notes, t)
    reach = (_SLIDE_GRIP0 + ext) * SLIDE_FORESHORTEN * k
    grip = mouth + d * reach[:, None] - nrm * (2.5 * k)
    hs = body.size * body.hand
    # right hand: a loose fist around the slide brace, knuckles toward the bell
    r_flex = np.radians([[15, 30, 30], [55, 60, 40], [60, 60, 40], [60, 60, 40], [60, 55, 40]])
    r_local = hand_points(np.broadcast_to(r_flex, (T, 5, 3)), hs, thumb_dir=math.radians(55)) * _MIRROR
    r_hold = 0.5 * (r_local[:, 6] + r_local[:, 14])
    rh_ang = np.arctan2(d[:, 1], d[:, 0]) + np.radians(75)
    r_wrist_target = grip - _rot(r_hold, rh_ang)
    r_elbow, r_wrist = two_bone_ik(W[:, 2], r_wrist_target, body.upper_arm, body.forearm, pole=(0.2, -1.0))
    W[:, 3], W[:, 4] = r_elbow, r_wrist
    W[:, RIGHT_HAND.start:RIGHT_HAND.stop] = place_hand(r_local, r_wrist, rh_ang, mirror=False)
    grip_actual = r_wrist + _rot(r_hold, rh_ang)

    # left hand: holds the instrument just below the mouthpiece, a fist around the braces
    l_grip = mouth + d * (10.0 * k) - nrm * (7.0 * k)
    l_flex = np.radians([[15, 25, 30], [60, 65, 40], [60, 65, 40], [60, 65, 40], [60, 60, 40]])
    l_local = hand_points(np.broadcast_to(l_flex, (T, 5, 3)), hs, thumb_dir=math.radians(60)) * _MIRROR
    l_hold = 0.5 * (l_local[:, 6] + l_local[:, 14])
    lh_ang = np.arctan2(d[:, 1], d[:, 0]) + np.radians(100)
    l_wrist_target = l_grip - _rot(l_hold, lh_ang)
    l_elbow, l_wrist = two_bone_ik(W[:, 5], l_wrist_target, body.upper_arm, body.forearm, pole=(0.3, -1.0))
    W[:, 6], W[:, 7] = l_elbow, l_wrist
    W[:, LEFT_HAND.start:LEFT_HAND.stop] = place_hand(l_local, l_wrist, lh_ang, mirror=False)

    playing = np.zeros(T, bool)
    for n in notes:
        i0, i1 = np.searchsorted(t, [n.onset, n.end])
        playing[i0:i1] = True
    state = {"slide_position": pos, "slide_extension": ext, "playing": playing, "loudness": loud, "sway": sway,
             "left_reach_error": np.linalg.norm(l_wrist - l_wrist_target, axis=-1),
             "right_reach_error": np.linalg.norm(r_wrist - r_wrist_target, axis=-1)}

    def along(a: np.ndarray | float, up: float) -> np.ndarray:
        """World point ``a`` body-cm along the slide from the lips and ``up`` above it."""
        a_t = np.broadcast_to(np.asarray(a, float), (T,))
        return mouth + d * (a_t * k)[:, None] + nrm * (up * k)

    _, outer1 = slide_outer_span(reach / k)
    geo = {"mouth": mouth, "slide_dir": d, "slide_normal": nrm, "grip": grip_actual,
           "slide_reach": reach, "inner_len": np.full(T, _SLIDE_INNER * SLIDE_FORESHORTEN * k),
           "scale": np.full(T, k),
           # the instrument points (INSTRUMENT_POINTS["trombone"]), drawn from exactly these
           "mouthpiece": along(TROMBONE_MOUTHPIECE_ALONG, 0.0),
           "bell": along(TROMBONE_BELL_AT, TROMBONE_BELL_UP),
           "slide_crook": along(np.asarray(outer1) + SLIDE_CROOK_DEPTH, 0.5 * sum(SLIDE_TUBES_UP))}
    return W, state, geo


# --------------------------------------------------------------------------- framing and the whole


def _world_motion(body: Body, notes: Sequence[Note], t: np.ndarray,
                  sway_override: float | None = None, idle: bool = True) -> tuple[np.ndarray, dict, dict]:
    sway, nod = _upper_body_motion(body, notes, t, idle)
    if sway_override is not None:
        sway = np.full_like(t, sway_override)
        nod = np.full_like(t, sway_override)
    rest = _rest_pose(body)
    if body.instrument == "cello":
        return _cello(body, notes, t, sway, nod, rest)
    return _trombone(body, notes, t, sway, nod, rest)


def _sweep_notes(instrument: str) -> list[Note]:
    """Every pitch in range, loud and long: the performer's widest reach."""
    inst = get_instrument(instrument)
    notes, on = [], 0.0
    for p in list(range(inst.low, inst.high + 1)) + [inst.low, inst.high, inst.low]:
        for dur in (0.25, 2.0):
            notes.append(Note(on, dur, p, 127))
            on += dur + 0.05
    return notes


@functools.lru_cache(maxsize=64)
def framing(body: Body, width: int, height: int, margin: float = 0.04) -> tuple[float, float, float]:
    """(px_per_cm, x0, y0): world (x, y) -> pixel (x0 + s x, y0 - s y), chosen so that every
    keypoint of any performance stays inside the frame with ``margin`` to spare."""
    notes = _sweep_notes(body.instrument)
    t = np.arange(0.0, notes[-1].end, 1 / 30)
    lim = math.radians(body.sway_deg + body.lean_deg * 1.5 + body.nod_deg * 1.6)
    pts = []
    for sw in (-lim, 0.0, lim):
        W, _, _ = _world_motion(body, notes, t, sway_override=sw)
        pts.append(W.reshape(-1, 2))
    P = np.concatenate(pts)
    lo, hi = P.min(axis=0), P.max(axis=0)
    span = hi - lo
    usable_w, usable_h = width * (1 - 2 * margin), height * (1 - 2 * margin)
    s = min(usable_w / span[0], usable_h / span[1]) * body.zoom
    free_x = usable_w - s * span[0]
    x0 = width * margin + 0.5 * free_x * (1 + body.shift_x) - s * lo[0]
    free_y = usable_h - s * span[1]
    y0 = height * margin + free_y * 0.7 + s * hi[1]  # a bit more room above the head than below
    return float(s), float(x0), float(y0)


_GEO_VECTORS = {"axis", "across", "bow_dir", "slide_dir", "slide_normal"}
_GEO_LENGTHS = {"slide_reach", "inner_len", "scale"}


def perform(notes: Sequence[Note], body: Body, n_frames: int, video: VideoSpec | None = None,
            idle: bool = True) -> Performance:
    """The performer's motion for ``n_frames`` frames (frame i at i / fps). ``idle=False``:
    without the idle motion (the sway and nod that follow the clock, not the notes; the
    module docstring), framed as with it."""
    video = video or VideoSpec()
    t = np.arange(n_frames) / video.fps
    W, state, geo = _world_motion(body, list(notes), t, idle=idle)
    s, x0, y0 = framing(body, video.width, video.height)

    def to_px(p: np.ndarray) -> np.ndarray:
        return np.stack([x0 + s * p[..., 0], y0 - s * p[..., 1]], axis=-1)

    px = to_px(W)
    kp = px / np.array([video.width, video.height])
    geo_px: dict[str, np.ndarray] = {}
    for name, v in geo.items():
        if name in _GEO_VECTORS:
            geo_px[name] = np.stack([v[..., 0], -v[..., 1]], axis=-1)  # directions: flip y only
        elif name in _GEO_LENGTHS:
            geo_px[name] = v * s
        else:
            geo_px[name] = to_px(v)
    geo_px["pixels"] = px
    assert kp.shape[1] == N_KEYPOINTS
    names = instrument_point_names(body.instrument)
    inst = np.stack([geo_px[n] for n in names], axis=1) if names else np.zeros((n_frames, 0, 2))
    inst = inst / np.array([video.width, video.height])
    return Performance(t, kp.astype(np.float32), W, state, geo_px, s, inst.astype(np.float32))
