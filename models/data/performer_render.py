"""Drawing the synthetic performer from its keypoints (OpenCV, anti-aliased).

Every body shape is drawn *from* the 67 keypoints of :mod:`performer_motion`: limbs
are shaded capsules along the BODY_25 edges, fingers follow the hand edges, the
torso is a polygon through the shoulders and hips, the face is placed by the nose,
eyes and ears. The instrument comes from the motion's geometry (cello axis, bow,
slide). So the keypoints saved with a clip are exact by construction.

The look of a performer -- skin, hair, clothes, room, instrument finish, light
direction -- is a :class:`Look` drawn from the same seed as its :class:`Body`; the
seed *is* the performer's identity.

Drawing uses sub-pixel coordinates (``shift`` = 4 bits) and ``cv2.LINE_AA``; frames are
RGB uint8 ``[H, W, 3]``.

On request (:meth:`PerformerRenderer.render` with ``parts``) the same primitives, in the
same order, also draw a part-label map: uint8 ``[H, W]``, one id per pixel from
:data:`PART_LABELS` (0 = background), without anti-aliasing, later drawing overwriting
earlier -- so each pixel holds the part that is visible there. The colour frame does not
depend on whether the map is drawn.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from letsplay.models.data.performer_motion import (
    CELLO_BRIDGE_T,
    CELLO_SCROLL_T,
    CELLO_T_SHIFT,
    SLIDE_CROOK_DEPTH,
    SLIDE_FORESHORTEN,
    SLIDE_TUBES_UP,
    TROMBONE_BELL_AT,
    TROMBONE_BELL_UP,
    TROMBONE_MOUTHPIECE_ALONG,
    Body,
    Performance,
    slide_outer_span,
)
from letsplay.models.skeleton import EDGES, LEFT_HAND, PARTS, RIGHT_HAND

SHIFT = 4
_F = 1 << SHIFT
AA = cv2.LINE_AA

Color = tuple[int, int, int]

# The part-label map's ids: PART_LABELS[i] is the name of label i. Fixed: datasets store
# these names beside the maps (dataset format 2); append new parts, never renumber.
PART_LABELS: tuple[str, ...] = (
    "background",  # 0: the room (the plate)
    "head",  # head, neck, hair and face
    "torso",  # shirt and collar
    "right_upper_arm", "right_forearm", "right_hand",  # the performer's right (image left)
    "left_upper_arm", "left_forearm", "left_hand",
    "legs",  # trousers and shoes
    "chair",  # the cellist's chair
    "instrument_body",  # cello body, neck, scroll, endpin, strings; trombone bell section
    "bow",  # cello bow: stick, hair and frog
    "slide",  # trombone slide: mouthpiece, inner and outer tubes, crook, braces
)
LABEL: dict[str, int] = {name: i for i, name in enumerate(PART_LABELS)}


# --------------------------------------------------------------------------- the look


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (int(r * 255), int(g * 255), int(b * 255))


def _scale(c: Color, f: float) -> Color:
    return (min(255, max(0, int(c[0] * f))), min(255, max(0, int(c[1] * f))), min(255, max(0, int(c[2] * f))))


def _mix(a: Color, b: Color, w: float) -> Color:
    return tuple(int(round(x * (1 - w) + y * w)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


_SKIN = [(243, 206, 180), (234, 186, 150), (216, 160, 120), (190, 130, 92), (150, 98, 66), (110, 72, 50),
         (84, 56, 42)]
_HAIR = [(28, 24, 24), (52, 36, 28), (92, 62, 40), (140, 100, 60), (205, 170, 110), (150, 148, 145),
         (120, 52, 30)]
_HAIR_STYLES = ("short", "long", "bun", "bald", "curly")


@dataclass(frozen=True)
class Look:
    """Colours and styles of one performer and their room (RGB)."""

    skin: Color
    hair: Color
    hair_style: str
    shirt: Color
    long_sleeves: bool
    trousers: Color
    shoes: Color
    wall_top: Color
    wall_bottom: Color
    floor: Color
    decor: str  # "plain" | "curtain" | "panels" | "window"
    decor_color: Color
    chair: Color
    wood: Color  # cello varnish
    brass: Color  # trombone lacquer
    light: float  # +1 light from image left, -1 from image right
    vignette: float

    @classmethod
    def from_seed(cls, seed: int) -> Look:
        r = np.random.default_rng([int(seed), 0x100C])
        skin = _SKIN[int(r.integers(len(_SKIN)))]
        skin = _scale(skin, float(r.uniform(0.95, 1.05)))
        hair = _HAIR[int(r.integers(len(_HAIR)))]
        formal = r.random() < 0.45
        shirt = (_hsv(r.random(), r.uniform(0, 0.2), r.uniform(0.08, 0.2)) if formal
                 else _hsv(r.random(), r.uniform(0.25, 0.75), r.uniform(0.35, 0.85)))
        trousers = _hsv(r.choice([0.6, 0.08, 0.0]), r.uniform(0.0, 0.35), r.uniform(0.1, 0.35))
        wall_h = r.random()
        wall_v = r.uniform(0.45, 0.85)
        wall_top = _hsv(wall_h, r.uniform(0.05, 0.35), wall_v)
        wall_bottom = _hsv(wall_h + r.uniform(-0.03, 0.03), r.uniform(0.05, 0.35), wall_v * r.uniform(0.7, 0.95))
        floor = (_hsv(r.uniform(0.05, 0.1), r.uniform(0.4, 0.7), r.uniform(0.3, 0.6)) if r.random() < 0.6
                 else _hsv(r.random(), r.uniform(0.0, 0.15), r.uniform(0.25, 0.55)))
        decor = str(r.choice(["plain", "curtain", "panels", "window"], p=[0.25, 0.3, 0.25, 0.2]))
        return cls(
            skin=skin, hair=hair, hair_style=str(r.choice(_HAIR_STYLES, p=[0.35, 0.25, 0.15, 0.1, 0.15])),
            shirt=shirt, long_sleeves=bool(r.random() < 0.8), trousers=trousers,
            shoes=_hsv(0.07, r.uniform(0.1, 0.5), r.uniform(0.05, 0.25)),
            wall_top=wall_top, wall_bottom=wall_bottom, floor=floor, decor=decor,
            decor_color=_hsv(r.random(), r.uniform(0.2, 0.6), r.uniform(0.3, 0.7)),
            chair=_hsv(r.uniform(0.0, 0.12), r.uniform(0.0, 0.5), r.uniform(0.1, 0.35)),
            wood=_hsv(r.uniform(0.04, 0.09), r.uniform(0.65, 0.9), r.uniform(0.45, 0.7)),
            brass=(_hsv(r.uniform(0.11, 0.14), r.uniform(0.45, 0.65), r.uniform(0.75, 0.9)) if r.random() < 0.85
                   else _hsv(0.6, 0.03, 0.8)),
            light=float(r.choice([-1.0, 1.0])), vignette=float(r.uniform(0.1, 0.35)),
        )


# --------------------------------------------------------------------------- primitives


class _Canvas:
    """Where the primitives draw: the colour frame and, when asked for, the part-label map
    (``labels``, drawn with ``label`` and no anti-aliasing)."""

    __slots__ = ("img", "labels", "label")

    def __init__(self, img: _Canvas, labels: np.ndarray | None = None) -> None:
        self.img, self.labels, self.label = img, labels, 0


# Points arrive in letsplay's pixel units (pixel i covers [i, i + 1), its centre at i + 0.5);
# OpenCV puts pixel i's centre at i, hence the half-pixel shift.


def _p(p: np.ndarray) -> tuple[int, int]:
    return (int(round((float(p[0]) - 0.5) * _F)), int(round((float(p[1]) - 0.5) * _F)))


def _poly(pts: np.ndarray) -> np.ndarray:
    return np.round((np.asarray(pts) - 0.5) * _F).astype(np.int32).reshape(-1, 1, 2)


def _line(img: _Canvas, a: np.ndarray, b: np.ndarray, color: Color, width: float) -> None:
    pa, pb, w = _p(a), _p(b), max(1, int(round(width)))
    cv2.line(img.img, pa, pb, color, w, AA, SHIFT)
    if img.labels is not None:
        cv2.line(img.labels, pa, pb, img.label, w, cv2.LINE_8, SHIFT)


def _polylines(img: _Canvas, pts: np.ndarray, closed: bool, color: Color, width: float) -> None:
    poly, w = [_poly(pts)], max(1, int(width))
    cv2.polylines(img.img, poly, closed, color, w, AA, SHIFT)
    if img.labels is not None:
        cv2.polylines(img.labels, poly, closed, img.label, w, cv2.LINE_8, SHIFT)


def _capsule(img: _Canvas, a: np.ndarray, b: np.ndarray, color: Color, width: float, light: np.ndarray,
             outline: float = 0.55) -> None:
    """A shaded limb: dark rim, body colour, a highlight toward the light."""
    w = max(1.0, width)
    _line(img, a, b, _scale(color, outline), w + 1.5)
    _line(img, a, b, color, w)
    if w >= 4:
        off = light * w * 0.18
        _line(img, a + off, b + off, _mix(color, (255, 255, 255), 0.22), w * 0.35)


def _fill(img: _Canvas, pts: np.ndarray, color: Color) -> None:
    poly = [_poly(pts)]
    cv2.fillPoly(img.img, poly, color, AA, SHIFT)
    if img.labels is not None:
        cv2.fillPoly(img.labels, poly, img.label, cv2.LINE_8, SHIFT)


def _ellipse(img: _Canvas, c: np.ndarray, axes: tuple[float, float], angle: float, color: Color,
             start: float = 0, end: float = 360, thickness: int = -1) -> None:
    pc, ax = _p(c), (max(1, int(axes[0] * _F)), max(1, int(axes[1] * _F)))
    cv2.ellipse(img.img, pc, ax, angle, start, end, color, thickness, AA, SHIFT)
    if img.labels is not None:
        cv2.ellipse(img.labels, pc, ax, angle, start, end, img.label, thickness, cv2.LINE_8, SHIFT)


def _shaded_poly(img: _Canvas, pts: np.ndarray, color: Color, light: np.ndarray, edge: float = 0.6) -> None:
    """A filled shape with a darker rim and a lighter inner patch offset toward the light."""
    pts = np.asarray(pts, dtype=float)
    c = pts.mean(axis=0)
    _fill(img, pts, _scale(color, edge))
    inner = c + (pts - c) * 0.9
    _fill(img, inner, color)
    span = float(np.ptp(pts[:, 0]) + np.ptp(pts[:, 1])) * 0.5
    hi = c + (pts - c) * 0.55 + light * span * 0.12
    _fill(img, hi, _mix(color, (255, 255, 255), 0.12))


# --------------------------------------------------------------------------- the room


def render_background(look: Look, width: int, height: int, floor_y: float, feet_x: float, seed: int) -> np.ndarray:
    """The static room behind the performer, with a soft shadow under them."""
    r = np.random.default_rng([seed, 0xB6])
    y = np.linspace(0, 1, height)[:, None, None]
    wall = (np.array(look.wall_top) * (1 - y) + np.array(look.wall_bottom) * y) * np.ones((1, width, 1))
    img = wall.astype(np.float32)
    horizon = int(np.clip(floor_y - height * r.uniform(0.12, 0.2), height * 0.55, height - 8))
    if look.decor == "curtain":
        x = np.arange(width)
        folds = 0.82 + 0.18 * np.sin(x / width * 2 * np.pi * r.uniform(5, 9) + r.uniform(0, 6))
        curtain = np.array(look.decor_color, np.float32)[None, None] * folds[None, :, None]
        img[:horizon] = curtain * np.linspace(0.8, 1.0, horizon)[:, None, None]
    elif look.decor == "panels":
        n = int(r.integers(2, 4))
        pw = width / n
        for i in range(n):
            x0, x1 = int(i * pw + pw * 0.12), int((i + 1) * pw - pw * 0.12)
            y0, y1 = int(height * 0.08), int(horizon - height * 0.06)
            img[y0:y1, x0:x1] *= 0.93
            img[y0:y0 + 2, x0:x1] *= 0.85
            img[y1 - 2:y1, x0:x1] *= 1.08
    elif look.decor == "window":
        x0 = int(r.uniform(0.05, 0.6) * width)
        w = int(width * r.uniform(0.22, 0.35))
        y0, y1 = int(height * 0.1), int(height * 0.45)
        img[y0:y1, x0:x0 + w] = img[y0:y1, x0:x0 + w] * 0.3 + np.array([235, 240, 245], np.float32) * 0.7
        img[y0:y1, x0 + w // 2 - 1:x0 + w // 2 + 1] *= 0.6
        img[(y0 + y1) // 2 - 1:(y0 + y1) // 2 + 1, x0:x0 + w] *= 0.6
    # floor
    fy = np.linspace(0, 1, height - horizon)[:, None, None]
    img[horizon:] = np.array(look.floor, np.float32) * (0.8 + 0.35 * fy)
    img[horizon:horizon + 3] *= 0.7  # skirting board
    # light: brighter toward the lit side, vignette
    xx = np.linspace(-1, 1, width)[None, :, None]
    yy = np.linspace(-1, 1, height)[:, None, None]
    img *= 1.0 + 0.08 * look.light * -xx
    img *= 1.0 - look.vignette * np.clip(xx**2 + yy**2 - 0.3, 0, None) * 0.6
    out = np.clip(img + r.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    # the performer's shadow on the floor
    shadow = np.zeros((height, width), np.float32)
    cv2.ellipse(shadow, (int(feet_x), int(min(floor_y, height - 3))), (int(width * 0.28), int(height * 0.035)),
                0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigmaX=width * 0.03)
    return (out * (1 - 0.35 * shadow[..., None])).astype(np.uint8)


# --------------------------------------------------------------------------- the performer


class PerformerRenderer:
    """Renders frames of one performer (identity seed) playing one instrument."""

    def __init__(self, body: Body, look: Look, perf: Performance, width: int, height: int) -> None:
        self.body, self.look, self.perf = body, look, perf
        self.width, self.height = width, height
        self.s = perf.px_per_cm  # pixels per cm
        self.light = np.array([-look.light, -1.0]) / math.sqrt(2)  # toward the light source
        px = perf.geometry["pixels"]
        feet = px[0, [11, 14]].mean(axis=0)
        floor_y = float(px[0, [19, 22]].max(axis=0)[1]) + 2
        self.background = render_background(look, width, height, floor_y, feet[0], body.seed)
        k = body.size
        self.cm = self.s * k  # pixels per body-cm

    # ---- body parts
    def _legs(self, img: _Canvas, P: np.ndarray) -> None:
        lk, cm = self.look, self.cm
        img.label = LABEL["legs"]
        for hip, knee, ankle, heel, big, small in ((9, 10, 11, 24, 22, 23), (12, 13, 14, 21, 19, 20)):
            shoe = np.array([P[ankle] + (P[ankle] - P[big]) * 0.15, P[heel], P[small], P[big]])
            _shaded_poly(img, _hull(shoe, 1.8 * cm), lk.shoes, self.light)
            _capsule(img, P[knee], P[ankle], lk.trousers, 11.5 * cm, self.light)
            _capsule(img, P[hip], P[knee], lk.trousers, 15 * cm, self.light)

    def _torso(self, img: _Canvas, P: np.ndarray) -> None:
        lk, cm = self.look, self.cm
        out_r = _norm(P[2] - P[5])
        down = _norm(P[8] - P[1])
        pts = np.array([
            P[2] + out_r * 3.5 * cm - down * 1.0 * cm, P[1] - down * 1.5 * cm,
            P[5] - out_r * 3.5 * cm - down * 1.0 * cm,
            P[5] - out_r * 1.5 * cm + down * 18 * cm, P[12] - out_r * 3.5 * cm + down * 3 * cm,
            P[9] + out_r * 3.5 * cm + down * 3 * cm, P[2] + out_r * 1.5 * cm + down * 18 * cm,
        ])
        img.label = LABEL["torso"]
        _shaded_poly(img, pts, lk.shirt, self.light)
        # collar: a V of skin at the neck
        v = np.array([P[1] - out_r * 3 * cm - down * 1.2 * cm, P[1] + out_r * 3 * cm - down * 1.2 * cm,
                      P[1] + down * 5 * cm])
        _fill(img, v, _scale(lk.skin, 0.92))

    def _head(self, img: _Canvas, P: np.ndarray) -> None:
        lk, cm, body = self.look, self.cm, self.body
        up = _norm(P[1] - P[8])
        ears = 0.5 * (P[17] + P[18])
        centre = ears + up * 1.0 * cm
        angle = math.degrees(math.atan2(up[0], -up[1]))  # head tilt
        rx, ry = 8.8 * cm, 11.5 * cm
        nose_dir = P[0] - ears
        img.label = LABEL["head"]
        _capsule(img, P[1], centre - up * 4 * cm, _scale(lk.skin, 0.9), 8.5 * cm, self.light, outline=0.8)
        back = -_norm(nose_dir) * 2.0 * cm if np.linalg.norm(nose_dir) > 1e-6 else np.zeros(2)
        hair_c = centre + up * 1.2 * cm + back * 0.6
        if lk.hair_style == "long":
            pts = np.array([hair_c - _perp(up) * 10 * cm + up * 2 * cm, hair_c + _perp(up) * 10 * cm + up * 2 * cm,
                            hair_c + _perp(up) * 11 * cm - up * 20 * cm, hair_c - _perp(up) * 11 * cm - up * 20 * cm])
            _fill(img, _hull(pts, 2 * cm), lk.hair)
        if lk.hair_style == "bun":
            _ellipse(img, hair_c + up * 10 * cm + back * 2, (4.5 * cm, 4.0 * cm), angle, _scale(lk.hair, 0.9))
        _ellipse(img, centre, (rx + 0.6, ry + 0.6), angle, _scale(lk.skin, 0.7))
        _ellipse(img, centre, (rx, ry), angle, lk.skin)
        _ellipse(img, centre + self.light * 2.5 * cm, (rx * 0.6, ry * 0.7), angle, _mix(lk.skin, (255, 255, 255), 0.1))
        # hair cap
        if lk.hair_style != "bald":
            start = 180 + 10
            _ellipse(img, hair_c, (rx + 1.2 * cm, ry + 0.5 * cm), angle, lk.hair, start, 360 - 10)
            if lk.hair_style == "curly":
                for a in np.linspace(200, 340, 7):
                    d = np.array([math.cos(math.radians(a + angle)), math.sin(math.radians(a + angle))])
                    _ellipse(img, hair_c + d * np.array([rx, ry]) * 0.95, (2.6 * cm, 2.6 * cm), 0, lk.hair)
        else:
            _ellipse(img, hair_c - up * 1.5 * cm, (rx + 0.5 * cm, ry * 0.8), angle, lk.hair, 160, 200,
                     max(1, int(cm)))
        # ears (the far one hides behind the head when the body is turned)
        turned = abs(body.yaw) > math.radians(20)
        for e, side in ((17, -1), (18, 1)):
            if turned and (side < 0) == (body.yaw > 0):
                continue
            _ellipse(img, P[e], (1.4 * cm, 2.6 * cm), angle, _scale(lk.skin, 0.85))
        # face: eyes, brows, nose, mouth
        eye_col = (35, 28, 28)
        for e in (15, 16):
            _ellipse(img, P[e], (max(0.6, 1.0 * cm), max(0.5, 0.7 * cm)), angle, eye_col)
            _line(img, P[e] + up * 1.8 * cm - _perp(up) * 1.2 * cm, P[e] + up * 2.0 * cm + _perp(up) * 1.2 * cm,
                  _scale(lk.hair, 0.8), max(1.0, 0.5 * cm))
        _line(img, P[0] + up * 1.5 * cm, P[0], _scale(lk.skin, 0.75), max(1.0, 0.6 * cm))
        mouth = P[0] - up * 3.6 * cm
        _line(img, mouth - _perp(up) * 1.6 * cm, mouth + _perp(up) * 1.6 * cm, _scale(lk.skin, 0.6), max(1.0, 0.5 * cm))

    def _arm(self, img: _Canvas, P: np.ndarray, shoulder: int, elbow: int, wrist: int) -> None:
        lk, cm = self.look, self.cm
        side = "right" if shoulder == 2 else "left"
        img.label = LABEL[f"{side}_upper_arm"]
        _capsule(img, P[shoulder], P[elbow], lk.shirt, 9.0 * cm, self.light)
        fore = lk.shirt if lk.long_sleeves else lk.skin
        img.label = LABEL[f"{side}_forearm"]
        _capsule(img, P[elbow], P[wrist], fore, 7.0 * cm, self.light)
        if lk.long_sleeves:  # cuff
            _capsule(img, P[wrist] + (P[elbow] - P[wrist]) * 0.1, P[wrist], lk.skin, 5.5 * cm, self.light)

    def _hand(self, img: _Canvas, P: np.ndarray, hand: range) -> None:
        lk, cm = self.look, self.cm
        h = P[hand.start:hand.stop]
        img.label = LABEL["right_hand" if hand == RIGHT_HAND else "left_hand"]
        palm = _hull(h[[0, 1, 5, 9, 13, 17]], 0.8 * cm)
        _fill(img, palm, _scale(lk.skin, 0.8))
        _fill(img, h[0] + (palm - h[0]) * 0.85, lk.skin)
        w = max(1.2, 1.7 * cm)
        for f in range(5):
            chain = [0] + [1 + 4 * f + j for j in range(4)]
            for a, b in zip(chain[1:-1], chain[2:], strict=True):
                _line(img, h[a], h[b], _scale(lk.skin, 0.7), w + 1)
            for a, b in zip(chain[1:-1], chain[2:], strict=True):
                _line(img, h[a], h[b], lk.skin, w)

    # ---- instruments
    def _cello_body(self, img: _Canvas, g: dict[str, np.ndarray], i: int) -> None:
        lk, cm = self.look, self.cm
        E, a, c = g["endpin"][i], g["axis"][i], g["across"][i]

        def pt(t: float | np.ndarray, lat: float | np.ndarray) -> np.ndarray:
            t = np.asarray(t, float) + CELLO_T_SHIFT
            lat = np.asarray(lat, float)
            return E + a * (t * cm)[..., None] + c * (lat * cm)[..., None]

        wood, dark = lk.wood, _scale(lk.wood, 0.45)
        img.label = LABEL["instrument_body"]
        _line(img, pt(-CELLO_T_SHIFT, 0), pt(18, 0), (150, 150, 155), max(1, 0.8 * cm))  # endpin
        out = pt(_OUT_T, _OUT_L)
        _fill(img, out, dark)
        _fill(img, pt(_OUT_T, _OUT_L * 0.96), wood)
        hi = pt(_OUT_T * 0.6 + 50 * 0.4, _OUT_L * 0.5 - 4 * self.look.light)
        _fill(img, hi, _mix(wood, (255, 230, 180), 0.16))
        _polylines(img, pt(_OUT_T, _OUT_L * 0.9), True, _scale(wood, 0.6), 1)
        for side in (-1, 1):  # f-holes
            f = pt(np.linspace(50, 64, 6), side * (7 + np.array([0.8, 0.2, -0.3, 0.3, 0.8, 0.4])))
            _polylines(img, f, False, (25, 15, 10), 0.7 * cm)
        tail = np.array([pt(24, -2.0), pt(24, 2.0), pt(46, 3.6), pt(46, -3.6)])
        _fill(img, tail, (22, 18, 16))
        _line(img, pt(CELLO_BRIDGE_T, -4.8), pt(CELLO_BRIDGE_T, 4.8), (225, 195, 140), max(1.0, 1.2 * cm))  # bridge
        board = np.array([pt(66, -3.4), pt(66, 3.4), pt(125, 1.7), pt(125, -1.7)])
        _fill(img, board, (20, 18, 18))
        _line(img, pt(66, -1.5), pt(125, -0.7), (60, 58, 58), 1)
        box = np.array([pt(124, -2.0), pt(124, 2.0), pt(135, 1.6), pt(135, -1.6)])
        _fill(img, box, _scale(wood, 0.8))
        for tp in (127, 130.5):
            _line(img, pt(tp, -4.5), pt(tp, 4.5), (30, 20, 15), max(1.0, 0.9 * cm))
        _ellipse(img, pt(CELLO_SCROLL_T, 0), (3.2 * cm, 3.2 * cm), 0, _scale(wood, 0.7))
        _ellipse(img, pt(CELLO_SCROLL_T, 0), (1.6 * cm, 1.6 * cm), 0, _scale(wood, 1.1))
        for s in range(4):  # strings
            _line(img, g["strings_nut"][i, s], g["strings_bridge"][i, s], (215, 210, 195), 1)
            _line(img, g["strings_bridge"][i, s], pt(45.5, (1.5 - s) * 1.3), (200, 195, 180), 1)

    def _bow(self, img: _Canvas, g: dict[str, np.ndarray], i: int) -> None:
        cm = self.cm
        frog, u, tip = g["bow_frog"][i], g["bow_dir"][i], g["bow_tip"][i]
        n = np.array([-u[1], u[0]])
        if n[1] < 0:
            n = -n  # toward image bottom
        img.label = LABEL["bow"]
        _line(img, frog + n * 0.9 * cm, tip + n * 0.9 * cm, (236, 230, 214), max(1.0, 0.9 * cm))  # hair
        _line(img, frog - u * 3 * cm, tip, (75, 40, 22), max(1.0, 0.9 * cm))  # stick
        _fill(img, np.array([frog - u * 2 * cm, frog + u * 3 * cm, frog + u * 3 * cm + n * 2.2 * cm,
                             frog - u * 2 * cm + n * 2.2 * cm]), (20, 16, 14))
        _line(img, tip, tip + n * 1.6 * cm, (230, 228, 220), max(1.0, 0.8 * cm))

    def _trombone(self, img: _Canvas, g: dict[str, np.ndarray], i: int, part: str) -> None:
        lk, cm = self.look, self.cm
        M, d, nr = g["mouth"][i], g["slide_dir"][i], g["slide_normal"][i]
        f = SLIDE_FORESHORTEN
        brass, dark, shine = lk.brass, _scale(lk.brass, 0.55), _mix(lk.brass, (255, 255, 255), 0.45)

        def pt(along: float | np.ndarray, up: float | np.ndarray) -> np.ndarray:
            along = np.asarray(along, float)
            up = np.asarray(up, float)
            return M + d * (along * cm)[..., None] + nr * (up * cm)[..., None]

        def tube(p: np.ndarray, q: np.ndarray, w: float) -> None:
            _line(img, p, q, dark, w + 1.2)
            _line(img, p, q, brass, w)
            _line(img, p + nr * w * 0.2, q + nr * w * 0.2, shine, max(1.0, w * 0.3))

        tw = max(1.5, 1.6 * cm)
        if part == "bell":
            img.label = LABEL["instrument_body"]
            # tuning slide behind the head and the bell section above the slide
            back = np.array([pt(-4, 6.5), pt(-20, 6.5), pt(-23, 4.0), pt(-20, 1.5), pt(-4, 1.5), pt(2, -4.5)])
            _polylines(img, back, False, dark, tw + 1.2)
            _polylines(img, back, False, brass, tw)
            bell_at, bell_up = TROMBONE_BELL_AT, TROMBONE_BELL_UP
            tube(pt(-4, 6.5), pt(bell_at - 16, 6.5), tw)
            flare = np.array([pt(bell_at - 18, 7.3), pt(bell_at - 18, 5.7), pt(bell_at - 4, 1.0),
                              pt(bell_at, -4.3), pt(bell_at, 17.3), pt(bell_at - 4, 12.0)])
            _fill(img, flare, dark)
            _fill(img, M + (flare - M) * 0.985 + nr * 0.3, brass)
            ang = math.degrees(math.atan2(nr[1], nr[0]))
            _ellipse(img, pt(bell_at, bell_up), (10.8 * cm, 4.6 * cm), ang, dark)
            _ellipse(img, pt(bell_at, bell_up), (10.0 * cm, 4.0 * cm), ang, _scale(brass, 0.8))
            _ellipse(img, pt(bell_at + 0.5, bell_up), (6.8 * cm, 2.4 * cm), ang, _scale(brass, 0.45))
            _line(img, pt(8, 6.5), pt(8, 0), dark, max(1.0, 0.8 * cm))  # brace
            return
        # the slide: inner tubes from the fixed brace, outer tubes from the hand to the crook
        img.label = LABEL["slide"]
        reach = float(g["slide_reach"][i]) / cm
        inner_end = 66 * f
        outer0, outer1 = (float(x) for x in slide_outer_span(reach))
        mp = TROMBONE_MOUTHPIECE_ALONG
        tube(pt(mp - 1, 0), pt(mp + 1, 0), tw * 1.3)  # mouthpiece
        for up in SLIDE_TUBES_UP:
            tube(pt(6, up), pt(min(inner_end, outer0 + 1), up), tw * 0.8)
            tube(pt(outer0, up), pt(outer1, up), tw * 1.1)
        top, bottom = SLIDE_TUBES_UP
        cd = SLIDE_CROOK_DEPTH
        crook = np.array([pt(outer1, top + 0.6), pt(outer1 + cd, top - 0.5), pt(outer1 + cd, bottom + 0.5),
                          pt(outer1, bottom - 0.6)])
        _polylines(img, crook, False, dark, tw * 1.1 + 1.2)
        _polylines(img, crook, False, brass, tw * 1.1)
        _line(img, pt(outer0 + 1, 0), pt(outer0 + 1, -5), dark, max(1.0, 1.0 * cm))  # slide brace
        _line(img, pt(9, 0), pt(9, -5), dark, max(1.0, 0.9 * cm))  # inner brace

    def _chair(self, img: _Canvas, P: np.ndarray) -> None:
        cm, col = self.cm, self.look.chair
        img.label = LABEL["chair"]
        hip = P[8]
        down = _norm(P[8] - P[1])
        side = _norm(P[12] - P[9])
        floor_y = float(P[[19, 22], 1].max())
        back = np.array([hip - side * 19 * cm - down * 42 * cm, hip + side * 19 * cm - down * 42 * cm,
                         hip + side * 19 * cm - down * 10 * cm, hip - side * 19 * cm - down * 10 * cm])
        _shaded_poly(img, back, col, self.light)
        for sx in (-17, 17):
            top = hip + side * sx * cm + down * 4 * cm
            _line(img, top, np.array([top[0], floor_y - 6 * cm]), _scale(col, 0.8), max(1, 2.2 * cm))
        seat = np.array([hip - side * 21 * cm + down * 1 * cm, hip + side * 21 * cm + down * 1 * cm,
                         hip + side * 20 * cm + down * 6 * cm, hip - side * 20 * cm + down * 6 * cm])
        _shaded_poly(img, seat, col, self.light)

    # ---- a frame
    def render(self, i: int, out: np.ndarray | None = None, parts: np.ndarray | None = None) -> np.ndarray:
        """Frame ``i`` as RGB uint8 [H, W, 3] (into ``out`` when given). With ``parts`` (uint8
        [H, W]) the frame's part-label map is drawn into it too (ids of :data:`PART_LABELS`)."""
        frame = self.background.copy() if out is None else _copy_into(out, self.background)
        if parts is not None:
            if parts.shape != (self.height, self.width) or parts.dtype != np.uint8:
                raise ValueError(f"parts must be uint8 [{self.height}, {self.width}], got {parts.dtype} "
                                 f"{tuple(parts.shape)}")
            parts.fill(0)
        img = _Canvas(frame, parts)
        g = self.perf.geometry
        P = g["pixels"][i]
        if self.body.instrument == "cello":
            self._chair(img, P)
            self._legs(img, P)
            self._torso(img, P)
            self._head(img, P)
            self._cello_body(img, g, i)
            self._arm(img, P, 5, 6, 7)
            self._hand(img, P, LEFT_HAND)
            self._bow(img, g, i)
            self._arm(img, P, 2, 3, 4)
            self._hand(img, P, RIGHT_HAND)
        else:
            self._legs(img, P)
            self._torso(img, P)
            self._arm(img, P, 2, 3, 4)
            self._head(img, P)
            self._trombone(img, g, i, "bell")
            self._trombone(img, g, i, "slide")
            self._hand(img, P, RIGHT_HAND)
            self._arm(img, P, 5, 6, 7)
            self._hand(img, P, LEFT_HAND)
        return frame

    def render_parts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``i`` and its part-label map: (RGB uint8 [H, W, 3], uint8 [H, W])."""
        parts = np.zeros((self.height, self.width), np.uint8)
        return self.render(i, parts=parts), parts


def _copy_into(out: np.ndarray, src: np.ndarray) -> np.ndarray:
    np.copyto(out, src)
    return out


def _norm(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([0.0, 1.0])


def _perp(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]])


def _hull(pts: np.ndarray, pad: float) -> np.ndarray:
    """Convex hull of points, pushed out by ``pad`` pixels."""
    h = cv2.convexHull(np.asarray(pts, np.float32)).reshape(-1, 2).astype(float)
    c = h.mean(axis=0)
    d = h - c
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return c + d * (n + pad) / np.maximum(n, 1e-6)


def _cello_outline() -> tuple[np.ndarray, np.ndarray]:
    """Cello body outline in (t along the axis, lateral) cm: lower bout, waist (C-bouts), upper bout."""
    t = np.linspace(18.0, 93.0, 40)
    # half-width profile through control points (t, half-width)
    ct = np.array([18, 20, 26, 36, 46, 52, 56, 60, 66, 74, 82, 89, 93])
    cw = np.array([0, 11, 19, 21.5, 19.5, 13.5, 11.5, 12.5, 15.5, 17.5, 16, 10, 0])
    w = np.interp(t, ct, cw)
    w = np.convolve(np.pad(w, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    w[0] = w[-1] = 0.0
    ts = np.concatenate([t, t[::-1]])
    ls = np.concatenate([w, -w[::-1]])
    return ts, ls


_OUT_T, _OUT_L = _cello_outline()


# --------------------------------------------------------------------------- keypoint overlay

_PART_COLORS: dict[str, Color] = {
    "head": (255, 80, 80), "torso": (255, 200, 0), "right_arm": (0, 200, 255), "left_arm": (0, 255, 120),
    "legs": (200, 120, 255), "left_hand": (0, 255, 0), "right_hand": (0, 160, 255),
}


def draw_keypoints(img: np.ndarray, keypoints: np.ndarray, confidence: np.ndarray | None = None,
                   radius: float = 1.6) -> np.ndarray:
    """Overlay the 67 keypoints (normalised) and skeleton edges on an RGB frame (in place)."""
    H, W = img.shape[:2]
    px = keypoints * np.array([W, H])
    conf = np.ones(len(px)) if confidence is None else confidence
    part_of = {}
    for name, idx in PARTS.items():
        for j in idx:
            part_of[j] = name
    canvas = _Canvas(img)
    for a, b in EDGES:
        if conf[a] > 0 and conf[b] > 0:
            _line(canvas, px[a], px[b], (255, 255, 255), 1)
    for j, p in enumerate(px):
        if conf[j] > 0:
            cv2.circle(img, _p(p), max(1, int(radius * _F)), _PART_COLORS[part_of[j]], -1, AA, SHIFT)
    return img
