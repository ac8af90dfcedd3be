"""The 67-point performer skeleton: OpenPose BODY_25 + left hand (21) + right hand (21).

Order follows OpenPose's JSON output (``pose_keypoints_2d``, ``hand_left_keypoints_2d``,
``hand_right_keypoints_2d``), so index ``i`` means the same joint everywhere in letsplay:
in datasets, in the keypoint predictor's output, in OSC messages. Coordinates are
normalised to [0, 1]: x = column / width, y = row / height (origin top-left). A pixel
``i`` covers ``[i, i+1) / size``, so its centre is at ``(i + 0.5) / size`` -- the same
convention as ``grid_sample(align_corners=False)`` and ``interpolate``.

Besides the layout constants this file holds:

* :func:`mean_pose` -- the per-instrument "avg condition" of the keypoint predictor
  (paper section III-A): a hand-made seated cellist and standing trombonist, to be
  replaced by the training set's mean (``KeypointPredictor.set_mean_pose``).
* :func:`dlt_heatmap` -- the differentiable landmark transformer (DLT), paper Eq. 1.
* :func:`normalized_adjacency` -- the skeleton graph for the STU's GCN (section III-C).
* :data:`INSTRUMENT_POINTS` -- the instrument's own named points and edges (bow frog and
  tip, slide crook, bell, ...), kept apart from the 67 body points: the body models, their
  heatmap channels and checkpoints do not change; :func:`dlt_heatmap` draws instrument
  points only when it is given them.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

BODY_25_NAMES: tuple[str, ...] = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "mid_hip", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye",
    "r_ear", "l_ear", "l_big_toe", "l_small_toe", "l_heel", "r_big_toe", "r_small_toe", "r_heel",
)
HAND_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_1", "thumb_2", "thumb_3", "thumb_4",
    "index_1", "index_2", "index_3", "index_4",
    "middle_1", "middle_2", "middle_3", "middle_4",
    "ring_1", "ring_2", "ring_3", "ring_4",
    "pinky_1", "pinky_2", "pinky_3", "pinky_4",
)

N_BODY = len(BODY_25_NAMES)  # 25
N_HAND = len(HAND_NAMES)  # 21
N_KEYPOINTS = N_BODY + 2 * N_HAND  # 67
BODY = range(0, N_BODY)
LEFT_HAND = range(N_BODY, N_BODY + N_HAND)
RIGHT_HAND = range(N_BODY + N_HAND, N_KEYPOINTS)

KEYPOINT_NAMES: tuple[str, ...] = (
    BODY_25_NAMES
    + tuple(f"l_hand_{n}" for n in HAND_NAMES)
    + tuple(f"r_hand_{n}" for n in HAND_NAMES)
)

# OpenPose's BODY_25 limb pairs (POSE_BODY_25_PAIRS_RENDER_GPU order).
BODY_25_EDGES: tuple[tuple[int, int], ...] = (
    (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11),
    (8, 12), (12, 13), (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18),
    (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24),
)
# OpenPose's hand pairs: the wrist to each finger's base, then along each finger.
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    pair
    for finger in range(5)
    for pair in [(0, 1 + 4 * finger)] + [(1 + 4 * finger + j, 2 + 4 * finger + j) for j in range(3)]
)
# Body wrist -> hand wrist. OpenPose draws hands apart from the body; the graph joins them.
L_WRIST, R_WRIST = 7, 4
JOIN_EDGES: tuple[tuple[int, int], ...] = ((L_WRIST, LEFT_HAND[0]), (R_WRIST, RIGHT_HAND[0]))

EDGES: tuple[tuple[int, int], ...] = (
    BODY_25_EDGES
    + tuple((a + LEFT_HAND[0], b + LEFT_HAND[0]) for a, b in HAND_EDGES)
    + tuple((a + RIGHT_HAND[0], b + RIGHT_HAND[0]) for a, b in HAND_EDGES)
    + JOIN_EDGES
)

# Body parts, for per-part heatmap channels. Every keypoint is in exactly one part.
PARTS: dict[str, tuple[int, ...]] = {
    "head": (0, 15, 16, 17, 18),
    "torso": (1, 2, 5, 8, 9, 12),
    "right_arm": (3, 4),
    "left_arm": (6, 7),
    "legs": (10, 11, 13, 14, 19, 20, 21, 22, 23, 24),
    "left_hand": tuple(LEFT_HAND),
    "right_hand": tuple(RIGHT_HAND),
}

PART_NAMES: tuple[str, ...] = tuple(PARTS)
_PART_ORDER: tuple[int, ...] = tuple(i for idx in PARTS.values() for i in idx)  # keypoints sorted by part
_PART_SPANS: tuple[tuple[int, int], ...] = tuple(
    (sum(len(v) for v in list(PARTS.values())[:c]), sum(len(v) for v in list(PARTS.values())[:c + 1]))
    for c in range(len(PARTS)))  # each part's [start, end) in _PART_ORDER

# --------------------------------------------------------------------------- mean poses

INSTRUMENTS: tuple[str, ...] = ("cello", "trombone")

# --------------------------------------------------------------------------- instrument points

# Per instrument: its named points (same normalised coordinates as the keypoints) and the
# edges between them. The synthetic renderer draws the instrument from exactly these
# points (``performer_motion``), so in synthetic datasets they are exact.
INSTRUMENT_POINTS: dict[str, tuple[str, ...]] = {
    # the bow (frog: where the hand holds the stick; tip: the stick's far end) and the
    # cello along its axis (endpin on the floor, bridge, scroll)
    "cello": ("bow_frog", "bow_tip", "endpin", "bridge", "scroll"),
    # mouthpiece at the lips, the bell's opening, the slide's crook (its far end)
    "trombone": ("mouthpiece", "bell", "slide_crook"),
}
INSTRUMENT_EDGES: dict[str, tuple[tuple[int, int], ...]] = {
    "cello": ((0, 1), (2, 3), (3, 4)),  # bow; endpin - bridge - scroll
    "trombone": ((0, 1), (0, 2)),  # bell section; slide
}


def instrument_point_names(instrument: str) -> tuple[str, ...]:
    """The instrument's point names in their fixed order; ``()`` for an instrument without
    a point layout (e.g. one that only appears in a Sub-URMP tree)."""
    return INSTRUMENT_POINTS.get(instrument, ())


def instrument_edges(instrument: str) -> tuple[tuple[int, int], ...]:
    """Edges between :func:`instrument_point_names` (indices into that tuple)."""
    return INSTRUMENT_EDGES.get(instrument, ())


def n_instrument_points(instrument: str) -> int:
    return len(instrument_point_names(instrument))


def _hand(wrist: tuple[float, float], angle_deg: float, size: float, spread_deg: float = 14.0,
          curl: float = 0.0, mirror: bool = False) -> np.ndarray:
    """21 hand keypoints (OpenPose order) for a hand whose fingers point at ``angle_deg``
    (image coordinates: 0 = +x, 90 = +y/down) from ``wrist``; ``size`` is the wrist to
    middle-fingertip length in normalised units, ``curl`` bends the fingers (radians per
    joint), ``mirror`` puts the thumb on the other side."""
    pts = [wrist]
    side = -1.0 if mirror else 1.0
    lengths = (0.40, 0.28, 0.18, 0.14)  # base-to-tip bone lengths, fraction of size
    for finger in range(5):  # thumb, index, middle, ring, pinky
        a = math.radians(angle_deg + side * spread_deg * (2 - finger)) + (
            side * math.radians(35) if finger == 0 else 0.0)
        x, y = wrist
        for j, frac in enumerate(lengths):
            scale = 0.75 if finger == 0 else (1.0 if finger in (1, 2) else 0.9)
            step = size * frac * scale
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            pts.append((x, y))
            a += side * curl * (j + 1) / 2
    return np.asarray(pts, dtype=np.float32)


def _cello() -> np.ndarray:
    # A seated cellist facing the camera: the cello stands between the knees, the left
    # hand (image right) stops the strings high on the neck, the right arm bows across
    # the strings at waist height.
    body = {
        0: (0.50, 0.16), 1: (0.50, 0.27), 2: (0.40, 0.28), 3: (0.36, 0.40), 4: (0.38, 0.52),
        5: (0.60, 0.28), 6: (0.65, 0.37), 7: (0.58, 0.33), 8: (0.50, 0.55), 9: (0.44, 0.55),
        10: (0.34, 0.68), 11: (0.36, 0.88), 12: (0.56, 0.55), 13: (0.66, 0.68), 14: (0.64, 0.88),
        15: (0.48, 0.145), 16: (0.52, 0.145), 17: (0.46, 0.155), 18: (0.54, 0.155),
        19: (0.66, 0.92), 20: (0.68, 0.915), 21: (0.63, 0.895),
        22: (0.34, 0.92), 23: (0.32, 0.915), 24: (0.37, 0.895),
    }
    left = _hand(body[7], angle_deg=160, size=0.06, curl=0.35, mirror=True)
    right = _hand(body[4], angle_deg=20, size=0.06, curl=0.5)
    return np.concatenate([np.asarray([body[i] for i in range(N_BODY)], np.float32), left, right])


def _trombone() -> np.ndarray:
    # A standing trombonist facing the camera: the left hand (image right) holds the
    # bell section at the mouth, the right hand works the slide in front of the chest.
    body = {
        0: (0.50, 0.12), 1: (0.50, 0.21), 2: (0.41, 0.22), 3: (0.38, 0.31), 4: (0.42, 0.36),
        5: (0.59, 0.22), 6: (0.61, 0.29), 7: (0.55, 0.20), 8: (0.50, 0.50), 9: (0.45, 0.50),
        10: (0.45, 0.70), 11: (0.45, 0.90), 12: (0.55, 0.50), 13: (0.55, 0.70), 14: (0.55, 0.90),
        15: (0.48, 0.105), 16: (0.52, 0.105), 17: (0.46, 0.115), 18: (0.54, 0.115),
        19: (0.57, 0.94), 20: (0.59, 0.935), 21: (0.55, 0.915),
        22: (0.43, 0.94), 23: (0.41, 0.935), 24: (0.45, 0.915),
    }
    left = _hand(body[7], angle_deg=200, size=0.055, curl=0.6, mirror=True)
    right = _hand(body[4], angle_deg=10, size=0.055, curl=0.4)
    return np.concatenate([np.asarray([body[i] for i in range(N_BODY)], np.float32), left, right])


_MEAN_POSES = {"cello": _cello, "trombone": _trombone}


def mean_pose(instrument: str) -> np.ndarray:
    """The instrument's mean pose ("avg condition", paper III-A): float32 ``[67, 2]``
    normalised (x, y). A hand-made plausible performer; a model trained on data should
    carry the dataset's mean instead (``KeypointPredictor.set_mean_pose``)."""
    if instrument not in _MEAN_POSES:
        raise ValueError(f"unknown instrument {instrument!r}; known: {list(INSTRUMENTS)}")
    pose = _MEAN_POSES[instrument]()
    assert pose.shape == (N_KEYPOINTS, 2)
    return pose.copy()


# --------------------------------------------------------------------------- DLT (Eq. 1)

HeatmapLayout = Literal["sum", "parts", "keypoints"]


def heatmap_channels(layout: HeatmapLayout, n_extra: int = 0) -> int:
    """Channels of a :func:`dlt_heatmap` layout: 1, ``len(PARTS)`` or 67. With ``n_extra``
    instrument points: ``"parts"`` gains one instrument channel, ``"keypoints"`` one
    channel per point, ``"sum"`` stays one map."""
    if n_extra < 0:
        raise ValueError(f"n_extra must be >= 0, got {n_extra}")
    if layout == "sum":
        return 1
    if layout == "parts":
        return len(PARTS) + (1 if n_extra else 0)
    if layout == "keypoints":
        return N_KEYPOINTS + n_extra
    raise ValueError(f"unknown heatmap layout {layout!r}; use 'sum', 'parts' or 'keypoints'")


@functools.lru_cache(maxsize=8)
def _part_order(device: torch.device) -> Tensor:
    """``_PART_ORDER`` as an index tensor, made once per device: no host-to-device copy per
    frame (a CUDA graph capture cannot contain one). Made outside inference mode, so a
    later autograd trace (training, ONNX export) in the same process may use it."""
    with torch.inference_mode(False):
        return torch.tensor(_PART_ORDER, device=device)


def part_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """``[len(PARTS), 67]`` one-hot assignment of keypoints to parts."""
    m = torch.zeros(len(PARTS), N_KEYPOINTS, dtype=dtype, device=device)
    for c, idx in enumerate(PARTS.values()):
        m[c, list(idx)] = 1.0
    return m


def tent_profiles(kp: Tensor, height: int, width: int, radius: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-keypoint 1D tents of Eq. 1: ``max(0, 1 - |i - K| / radius)`` along each axis.

    kp: ``[..., P, 2]`` normalised (x, y). Returns ``(py [..., P, height],
    px [..., P, width])``; pixel ``i``'s centre is at normalised ``(i + 0.5) / size``,
    so ``K`` in pixel units is ``x * width - 0.5``.
    """
    xs = torch.arange(width, dtype=kp.dtype, device=kp.device)
    ys = torch.arange(height, dtype=kp.dtype, device=kp.device)
    kx = kp[..., 0:1] * width - 0.5  # [..., P, 1] pixel units
    ky = kp[..., 1:2] * height - 0.5
    px = torch.clamp(1.0 - (xs - kx).abs() / radius, min=0.0)  # [..., P, W]
    py = torch.clamp(1.0 - (ys - ky).abs() / radius, min=0.0)  # [..., P, H]
    return py, px


def dlt_heatmap(kp: Tensor, height: int, width: int, layout: HeatmapLayout = "sum",
                alpha: float | Tensor = 1.0, radius: float = 1.0, extra: Tensor | None = None,
                extra_alpha: float | Tensor = 1.0) -> Tensor:
    """Differentiable landmark transformer, paper Eq. 1: a bilinear (tent) splat of each
    keypoint with intensity ``alpha``.

    ``H[y, x] = sum_s alpha_s * max(0, 1 - |x - Kx_s| / r) * max(0, 1 - |y - Ky_s| / r)``

    with ``K`` in pixel units. ``radius = 1`` (the default) is the paper's tent: each point
    touches its 2x2 nearest pixels, right for small maps (the ``tiny`` preset's 32x32) and
    the paper's 256x256. A wider tent (``max(0, 1 - |d| / r)``, the ``realtime`` preset
    uses 2 px at 128x128) gives bigger blobs for the STU to see and keeps Eq. 3's
    gradient alive for points up to ``2r`` pixels from their target. Computed separably
    as outer products of per-keypoint x/y profiles -- no per-pixel loop -- and
    differentiable w.r.t. ``kp`` (everywhere except exactly on the pixel grid or exactly
    ``r`` pixels off it, where ``|.|`` and ``max`` have kinks) and ``alpha``.

    kp: ``[..., 67, 2]`` normalised (x, y); alpha: a float or ``[..., 67]`` weights (e.g.
    OpenPose confidences, 0 for a missing point). Returns ``[..., C, height, width]``:
    ``"sum"`` one summed map (as in the paper), ``"parts"`` one map per ``PARTS`` entry,
    ``"keypoints"`` one map per keypoint.

    extra: optional instrument points ``[..., K, 2]`` (:data:`INSTRUMENT_POINTS`) with their
    own ``extra_alpha`` (a float or ``[..., K]``). They join the ``"sum"`` map, get one
    channel each after the 67 in ``"keypoints"``, and one more channel (their sum) after the
    body parts in ``"parts"`` (:func:`heatmap_channels` with ``n_extra``). Without ``extra``
    the output is exactly the 67-point heatmap.
    """
    if extra is not None:
        if extra.shape[-1] != 2 or extra.shape[:-2] != kp.shape[:-2]:
            raise ValueError(f"extra points must be [..., K, 2] with the keypoints' leading shape "
                             f"{tuple(kp.shape[:-2])}, got {tuple(extra.shape)}")
        body = dlt_heatmap(kp, height, width, layout, alpha, radius)
        if extra.shape[-2] == 0:
            return body
        if layout == "sum":
            return body + dlt_heatmap(extra, height, width, "sum", extra_alpha, radius)
        if layout == "keypoints":
            return torch.cat([body, dlt_heatmap(extra, height, width, "keypoints", extra_alpha, radius)], dim=-3)
        if layout == "parts":
            return torch.cat([body, dlt_heatmap(extra, height, width, "sum", extra_alpha, radius)], dim=-3)
        raise ValueError(f"unknown heatmap layout {layout!r}; use 'sum', 'parts' or 'keypoints'")
    *lead, P, two = kp.shape
    if two != 2:
        raise ValueError(f"keypoints must be [..., P, 2], got {tuple(kp.shape)}")
    py, px = tent_profiles(kp, height, width, radius)  # [..., P, H], [..., P, W]
    if isinstance(alpha, Tensor):
        py = py * alpha.to(py.dtype).unsqueeze(-1)
    elif alpha != 1.0:
        py = py * alpha
    if layout == "keypoints":
        return py.unsqueeze(-1) * px.unsqueeze(-2)  # [..., P, H, W]
    if layout == "sum":
        return (py.transpose(-1, -2) @ px).unsqueeze(-3)  # [..., H, P] @ [..., P, W] -> [..., 1, H, W]
    if layout == "parts":
        if P != N_KEYPOINTS:
            raise ValueError(f"'parts' layout needs the {N_KEYPOINTS}-point skeleton, got {P} points")
        # Each keypoint is in exactly one part: sort the points by part once, then each
        # channel is one [H, P_c] @ [P_c, W] product over its own points only.
        # (under torch.compile the constant is traced in: dynamo does not keep lru_cache)
        order = (torch.tensor(_PART_ORDER, device=py.device) if torch.compiler.is_compiling()
                 else _part_order(py.device))
        pys, pxs = py.index_select(-2, order), px.index_select(-2, order)  # [..., P, H], [..., P, W]
        maps = [pys[..., a:b, :].transpose(-1, -2) @ pxs[..., a:b, :] for a, b in _PART_SPANS]  # [..., H, W] each
        return torch.stack(maps, dim=-3)  # [..., C, H, W]
    raise ValueError(f"unknown heatmap layout {layout!r}; use 'sum', 'parts' or 'keypoints'")


# --------------------------------------------------------------------------- graph


def normalized_adjacency(dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> Tensor:
    """``D^-1/2 (A + I) D^-1/2`` over ``EDGES`` (Kipf & Welling): ``[67, 67]``, symmetric."""
    a = torch.eye(N_KEYPOINTS, dtype=torch.float64)
    for i, j in EDGES:
        a[i, j] = a[j, i] = 1.0
    d = a.sum(1).rsqrt()
    return (d[:, None] * a * d[None, :]).to(dtype=dtype, device=device)
