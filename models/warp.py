"""The layered warp: a performer's reference picture moved part by part to a new pose.

The performer at rest (``ref_rgb``), the room without the performer (``plate``) and the
reference's part map (``ref_labels``, ids of the renderer's part labels, plus derived
ids, see below) are cut into layers, one per part. Each layer is moved by a transform
computed *analytically* from the keypoints -- the reference's and the frame's -- with no
learning, and the layers are composited back to front over the plate, in the order the
parts are drawn. Pixels that do not move are copied, never re-drawn.

Transforms (each one the inverse map ``frame position -> reference position`` that
``grid_sample`` needs, in pixel units, so that a square frame keeps its angles):

* **bone** (two keypoints: an upper arm, a forearm) -- the reference's bone turned onto the
  frame's and stretched *along* it (foreshortening), its width kept;
* **similarity** (several keypoints: head, torso, legs, a hand) -- the least-squares
  rotation, uniform scale and shift (closed form in 2D, no solver: exportable);
* **instruments move with the hand that holds them**: the cello bow with the right hand's
  21 points, the trombone's bell section and inner slide with the left hand's, its outer
  slide and crook with the right hand's (the slide's layer is split at the right hand in
  the reference: :func:`split_slide`);
* **the cello body** turns about its endpin, which stays on the floor, by ``sway_gain``
  times the upper body's turn (neck about mid-hip) from the reference: the body is not a
  keypoint, yet it moves, leaning opposite to the upper body; the gain is fitted on the
  training clips' instrument points (:func:`fit_cello_sway`);
* **static** (the cellist's chair): not moved.

Each layer's coverage (its part map) and colour are sampled bilinearly and the layers are
composited by coverage, so their edges stay anti-aliased when they move and the frame is a
continuous function of the keypoints (the exported graph draws the same frame). Where a
part moved away and uncovered what the reference does not show (a hole), the plate shows
through; filling holes is the refinement's job, not this module's.

Everything is ``torch``, differentiable in the keypoints, batched, and exportable to ONNX
(``grid_sample``, elementwise maths, no linear solver).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.skeleton import LEFT_HAND, RIGHT_HAND, instrument_point_names

# The renderer's part labels (models/data/performer_render.PART_LABELS; ids never change),
# repeated here by name so that models/ does not import the renderer.
LABELS: dict[str, int] = {
    "background": 0, "head": 1, "torso": 2, "right_upper_arm": 3, "right_forearm": 4, "right_hand": 5,
    "left_upper_arm": 6, "left_forearm": 7, "left_hand": 8, "legs": 9, "chair": 10, "instrument_body": 11,
    "bow": 12, "slide": 13,
}
# Derived layers the reference map gains (never stored in datasets).
SLIDE_OUTER = 14  # the trombone slide's outer tubes and crook (moved by the right hand)
N_LAYER_IDS = 15

_RH, _LH = tuple(RIGHT_HAND), tuple(LEFT_HAND)
_LEGS = (8, 9, 10, 11, 12, 13, 14, 19, 20, 21, 22, 23, 24)
_TORSO = (1, 2, 5, 8, 9, 12)
_HEAD = (0, 1, 15, 16, 17, 18)


@dataclass(frozen=True)
class Layer:
    """One part's layer: its id in the reference map and how it moves."""

    label: int
    kind: str  # "bone" | "similarity" | "static" | "sway"
    points: tuple[int, ...] = ()  # the keypoints that carry it (bone: the two ends)


# Back to front, as the renderer draws (performer_render.PerformerRenderer.render).
RIGS: dict[str, tuple[Layer, ...]] = {
    "cello": (
        Layer(LABELS["chair"], "static"),
        Layer(LABELS["legs"], "similarity", _LEGS),
        Layer(LABELS["torso"], "similarity", _TORSO),
        Layer(LABELS["head"], "similarity", _HEAD),
        Layer(LABELS["instrument_body"], "sway"),
        Layer(LABELS["left_upper_arm"], "bone", (5, 6)),
        Layer(LABELS["left_forearm"], "bone", (6, 7)),
        Layer(LABELS["left_hand"], "similarity", _LH),
        Layer(LABELS["bow"], "similarity", _RH),
        Layer(LABELS["right_upper_arm"], "bone", (2, 3)),
        Layer(LABELS["right_forearm"], "bone", (3, 4)),
        Layer(LABELS["right_hand"], "similarity", _RH),
    ),
    "trombone": (
        Layer(LABELS["legs"], "similarity", _LEGS),
        Layer(LABELS["torso"], "similarity", _TORSO),
        Layer(LABELS["right_upper_arm"], "bone", (2, 3)),
        Layer(LABELS["right_forearm"], "bone", (3, 4)),
        Layer(LABELS["head"], "similarity", _HEAD),
        Layer(LABELS["instrument_body"], "similarity", _LH),
        Layer(LABELS["slide"], "similarity", _LH),
        Layer(SLIDE_OUTER, "similarity", _RH),
        Layer(LABELS["right_hand"], "similarity", _RH),
        Layer(LABELS["left_upper_arm"], "bone", (5, 6)),
        Layer(LABELS["left_forearm"], "bone", (6, 7)),
        Layer(LABELS["left_hand"], "similarity", _LH),
    ),
}


# --------------------------------------------------------------------------- transforms
# A transform is [B, 2, 3] (A | t) in pixel units: x_ref = A @ x_frame + t.


def similarity_inverse(ref: Tensor, cur: Tensor, eps: float = 1e-6) -> Tensor:
    """The least-squares similarity taking the frame's points ``cur`` [B, N, 2] onto the
    reference's ``ref`` [N, 2] or [B, N, 2] (pixel units) as [B, 2, 3]."""
    ref = ref.expand_as(cur)
    mc, mr = cur.mean(1, keepdim=True), ref.mean(1, keepdim=True)
    x, y = cur - mc, ref - mr
    den = (x * x).sum((1, 2)) + eps
    a = (x * y).sum((1, 2)) / den
    b = (x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]).sum(1) / den
    A = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [B, 2, 2]
    t = mr[:, 0] - (A @ mc[:, 0, :, None])[..., 0]
    return torch.cat([A, t[..., None]], -1)


def bone_inverse(ref: Tensor, cur: Tensor, eps: float = 1e-6) -> Tensor:
    """The frame's bone ``cur`` [B, 2, 2] (its two ends) onto the reference's ``ref``
    [2, 2] or [B, 2, 2]: turned, and stretched along the bone only, as [B, 2, 3]."""
    ref = ref.expand_as(cur)
    dc, dr = cur[:, 1] - cur[:, 0], ref[:, 1] - ref[:, 0]
    lc, lr = dc.norm(dim=-1).clamp_min(eps), dr.norm(dim=-1).clamp_min(eps)
    uc, ur = dc / lc[:, None], dr / lr[:, None]
    nc, nr = torch.stack([-uc[:, 1], uc[:, 0]], -1), torch.stack([-ur[:, 1], ur[:, 0]], -1)
    # x_ref = ref0 + ur * (lr / lc) * <x - cur0, uc> + nr * <x - cur0, nc>
    A = (ur * (lr / lc)[:, None])[:, :, None] * uc[:, None, :] + nr[:, :, None] * nc[:, None, :]
    t = ref[:, 0] - (A @ cur[:, 0, :, None])[..., 0]
    return torch.cat([A, t[..., None]], -1)


def rotation_inverse(center: Tensor, angle: Tensor) -> Tensor:
    """Turning by ``angle`` [B] (radians, image coordinates) about ``center`` [2], inverted:
    [B, 2, 3] taking a frame position back to where it was before the turn."""
    c, s = torch.cos(angle), torch.sin(angle)
    A = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # R(-angle)
    t = center - (A @ center[:, None])[..., 0]
    return torch.cat([A, t[..., None]], -1)


def upper_body_angle(kp: Tensor) -> Tensor:
    """The upper body's direction (mid-hip -> neck) [..., 67, 2] -> [...] radians."""
    d = kp[..., 1, :] - kp[..., 8, :]
    return torch.atan2(d[..., 1], d[..., 0])


# --------------------------------------------------------------------------- the reference


def split_slide(labels: np.ndarray, ref_kp_px: np.ndarray, ref_ip_px: np.ndarray) -> np.ndarray:
    """The trombone reference's slide layer split in two: pixels along the slide beyond the
    right hand's wrist (from the mouthpiece toward the crook; the outer tubes and crook,
    which the right hand moves) get :data:`SLIDE_OUTER`; the mouthpiece and inner tubes keep
    ``slide``. ``*_px``: the reference's keypoints and instrument points in pixels."""
    out = labels.copy()
    mouth, crook = ref_ip_px[0], ref_ip_px[2]
    d = crook - mouth
    d = d / max(float(np.linalg.norm(d)), 1e-6)
    hand_along = float((ref_kp_px[RIGHT_HAND[0]] - mouth) @ d)
    ys, xs = np.nonzero(labels == LABELS["slide"])
    along = (np.stack([xs + 0.5, ys + 0.5], 1) - mouth) @ d
    outer = along > hand_along - 2.0  # the hand grips the outer slide's brace just ahead of it
    out[ys[outer], xs[outer]] = SLIDE_OUTER
    return out


def fit_cello_sway(keypoints: np.ndarray, instrument_points: np.ndarray) -> float:
    """The cello body's turn per radian of upper-body turn, fitted over frames: the
    least-squares slope of the cello axis's angle (endpin -> scroll) on the upper body's
    angle, both relative to their means. ``keypoints`` [T, 67, 2], ``instrument_points``
    [T, 5, 2] (normalised; the frames are square)."""
    ax = instrument_points[:, 4] - instrument_points[:, 2]
    cello = np.unwrap(np.arctan2(ax[:, 1], ax[:, 0]))
    body = np.unwrap(upper_body_angle(torch.from_numpy(np.asarray(keypoints, np.float64))).numpy())
    cello, body = cello - cello.mean(), body - body.mean()
    den = float(body @ body)
    return 0.0 if den < 1e-12 else float(body @ cello) / den


class LayeredWarp(nn.Module):
    """A performer's reference, its layers and their rig; :meth:`forward` draws a pose.

    Built blank for an instrument and a frame size (every buffer zero: a Performer built
    from a config, before its reference is set or its checkpoint loaded), then given a
    reference with :meth:`set_reference`. The reference is part of the module's state
    (``ref_rgb``, ``plate`` [3, H, W] in [0, 1], ``ref_labels`` [H, W] uint8 layer ids,
    ``ref_kp`` [67, 2] and ``endpin`` [2] in pixels, ``sway_gain`` []), so it is saved and
    loaded with the Performer and baked into exported graphs as constants.
    """

    def __init__(self, instrument: str, size: tuple[int, int]) -> None:
        super().__init__()
        if instrument not in RIGS:
            raise ValueError(f"no layer rig for instrument {instrument!r}; known: {sorted(RIGS)}")
        self.instrument = instrument
        self.rig = RIGS[instrument]
        H, W = size
        self.size = (H, W)
        self.register_buffer("ref_rgb", torch.zeros(3, H, W))
        self.register_buffer("plate", torch.zeros(3, H, W))
        self.register_buffer("ref_labels", torch.zeros(H, W, dtype=torch.uint8))
        self.register_buffer("ref_kp", torch.zeros(67, 2))
        self.register_buffer("endpin", torch.zeros(2))
        self.register_buffer("sway_gain", torch.zeros(()))
        self.register_buffer("reach", torch.zeros(H, W, dtype=torch.uint8))  # pixels a part can reach
        self.register_buffer("scale", torch.tensor([float(W), float(H)]), persistent=False)
        self.register_buffer("layer_ids", torch.tensor([lay.label for lay in self.rig], dtype=torch.uint8),
                             persistent=False)
        # a loaded reference rebuilds the lookup tables at once (not inside a traced forward)
        self.register_load_state_dict_post_hook(_rebuild_tables)

    @torch.no_grad()
    def set_reference(self, ref_rgb: Tensor, plate: Tensor, ref_labels: Tensor, ref_keypoints: Tensor,
                      endpin: Tensor | None = None, sway_gain: float = 0.0,
                      reach: Tensor | None = None) -> LayeredWarp:
        """Take a reference: ``ref_rgb``, ``plate`` [3, H, W] in [0, 1], ``ref_labels``
        [H, W] layer ids (:data:`LABELS`, plus :data:`SLIDE_OUTER` for a trombone whose
        slide was split), ``ref_keypoints`` [67, 2] normalised, ``endpin`` [2] normalised
        (the cello's body turns about it), ``sway_gain`` (:func:`fit_cello_sway`),
        ``reach`` [H, W] bool: the pixels a part can reach (None: every pixel), outside
        which the plate is shown without computing anything."""
        H, W = self.size
        for name, t, shape in (("reference", ref_rgb, (3, H, W)), ("plate", plate, (3, H, W)),
                               ("part map", ref_labels, (H, W)), ("keypoints", ref_keypoints, (67, 2)),
                               ("reach", torch.ones(H, W) if reach is None else reach, (H, W))):
            if tuple(t.shape) != shape:
                raise ValueError(f"the {name} is {tuple(t.shape)}; this performer's frames need {shape}")
        if self.instrument == "cello" and endpin is None and bool((ref_labels == LABELS["instrument_body"]).any()):
            raise ValueError("the cello's body layer needs its endpin (the reference's instrument points)")
        self.ref_rgb.copy_(ref_rgb)
        self.plate.copy_(plate)
        self.ref_labels.copy_(ref_labels.to(torch.uint8))
        self.ref_kp.copy_(ref_keypoints.float() * self.scale)
        self.endpin.copy_((endpin.float() if endpin is not None else torch.zeros(2)) * self.scale)
        self.sway_gain.fill_(float(sway_gain))
        self.reach.copy_(torch.ones(H, W, dtype=torch.uint8) if reach is None else reach.to(torch.uint8))
        self._tables(self.plate.device)  # built now, so that a traced graph holds them as constants
        return self

    @property
    def has_reference(self) -> bool:
        return bool(self.ref_labels.any())

    def transforms(self, keypoints: Tensor) -> Tensor:
        """[B, 67, 2] normalised -> [B, L, 2, 3]: each layer's inverse map, in pixels."""
        cur = keypoints * self.scale.to(keypoints.dtype)
        ref_kp = self.ref_kp.to(cur.dtype)
        B = cur.shape[0]
        eye = torch.eye(2, 3, device=cur.device, dtype=cur.dtype).expand(B, 2, 3)
        out = []
        for lay in self.rig:
            idx = list(lay.points)
            if lay.kind == "static":
                out.append(eye)
            elif lay.kind == "bone":
                out.append(bone_inverse(ref_kp[idx], cur[:, idx]))
            elif lay.kind == "similarity":
                out.append(similarity_inverse(ref_kp[idx], cur[:, idx]))
            else:  # sway: the cello turns about its endpin against the upper body
                turn = upper_body_angle(cur) - upper_body_angle(ref_kp)
                turn = torch.atan2(torch.sin(turn), torch.cos(turn))
                out.append(rotation_inverse(self.endpin.to(cur.dtype), self.sway_gain.to(cur.dtype) * turn))
        return torch.stack(out, 1)

    def _tables(self, device: torch.device) -> tuple[Tensor, ...]:
        """What :meth:`forward` reads, derived from the reference and cached until it changes
        (so that an exported graph holds them as constants): the flat indices of the pixels a
        part can reach [N], their centres x, y [N], the plate there [1, 3, N], and the layers'
        part maps [L * (H+2) * (W+2)]: where the reference's (zero-bordered) map holds layer
        ``l``'s part or its outline, 1 at a cell, 2 at the cell right of it, 4 below, 8 below
        right, summed (the four corners a bilinear read takes, in one lookup), and each layer's
        start in that table [L, 1]."""
        key = tuple((t.data_ptr(), t._version) for t in (self.ref_labels, self.reach, self.plate)) + (device,)
        dtype = torch.float32
        if getattr(self, "_cache_key", None) != key:
            H, W = self.size
            with torch.no_grad():
                idx = torch.nonzero(self._reach().reshape(-1))[:, 0].to(device)
                x = (idx % W).to(dtype) + 0.5
                y = torch.div(idx, W, rounding_mode="floor").to(dtype) + 0.5
                padded = F.pad(self.ref_labels.long(), (1, 1, 1, 1))  # off the picture: no part
                ids = self.layer_ids.long()[:, None, None]
                own = padded[None] == ids  # [L, H+2, W+2]
                # a part's layer also holds the one-pixel background ring around it: its outline,
                # which bilinear sampling blends into the part's edge in the reference
                ring = F.max_pool2d(own.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
                own = own | (ring & (padded == 0)[None])
                # each cell's four corners (its own, right, below, below right) as one number
                m = F.pad(own.to(dtype), (0, 1, 0, 1))  # [L, H+3, W+3]
                code = m[:, :-1, :-1] + 2 * m[:, :-1, 1:] + 4 * m[:, 1:, :-1] + 8 * m[:, 1:, 1:]
                table = code.reshape(-1).to(device)
                off = torch.arange(len(self.rig), device=device, dtype=dtype)[:, None] * float((H + 2) * (W + 2))
                plate = self.plate.to(device, dtype).reshape(1, 3, H * W)[:, :, idx]
            self._cache = (idx, x, y, plate, table, off)
            self._cache_key = key
        return self._cache

    def flops(self) -> int:
        """Arithmetic per frame, estimated (elementwise work and gathers, which a FLOP counter
        of matrix products does not see): per reachable pixel and layer the reference
        position (8), its bilinear coverage (24) and its share (3); per reachable pixel the
        two layers that show most (2 L), two bilinear RGB samples (62) and the mix (12)."""
        return int(self._reach().sum()) * (37 * len(self.rig) + 74)

    def _reach(self) -> Tensor:
        """[H, W] bool: the pixels computed (a blank warp's empty reach: every pixel)."""
        return self.reach.bool() if bool(self.reach.any()) else torch.ones_like(self.reach, dtype=torch.bool)

    def forward(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoints [B, 67, 2] (normalised) -> (frame [B, 3, H, W] in [0, 1], the visible
        layer's rank per pixel [B, H, W]: 0 for the plate, ``l + 1`` for layer ``l``).

        For every layer the pixel's reference position is computed (elementwise) and the
        layer's coverage read there: its part map (with its outline), bilinear -- 1 inside, 0
        outside, a fraction across its edge. Composited back to front over the plate, each
        layer shows by its coverage times what the layers in front leave uncovered. The
        reference's colour is read (bilinear) at the positions of the two layers that show
        most -- every pixel but where three part edges cross is exactly the composite -- and
        mixed by their shares with the plate's. The frame is a continuous function of the
        keypoints: an edge moves by fractions of a pixel, anti-aliased as the renderer draws
        it, and the exported graph draws the same frame (a discrete choice of the front layer
        flips whole pixels on rounding differences of 1e-6). Only the pixels some part can
        reach (``reach``, from the reference's clip) are computed; the others show the plate."""
        B, L = keypoints.shape[0], len(self.rig)
        H, W = self.size
        dtype = keypoints.dtype  # positions and indices are computed in fp32 whatever the caller's dtype:
        T = self.transforms(keypoints.float())  # fp16 holds whole numbers only up to 2048  [B, L, 2, 3]
        idx, x, y, plate_n, table, off = self._tables(T.device)
        c = T[..., None]  # [B, L, 2, 3, 1]
        sx = c[:, :, 0, 0] * x + c[:, :, 0, 1] * y + c[:, :, 0, 2]  # [B, L, N] reference x, pixels
        sy = c[:, :, 1, 0] * x + c[:, :, 1, 1] * y + c[:, :, 1, 2]
        # bilinear coverage from the zero-bordered part maps: the four pixel centres around
        # the position (centres at i + 0.5), by hand
        u, v = sx - 0.5, sy - 0.5
        x0, y0 = torch.floor(u), torch.floor(v)
        wx, wy = u - x0, v - y0
        ix = (x0 + 1).clamp(0, W)  # padded column of the left corner; off the picture: the zero border
        iy = (y0 + 1).clamp(0, H)
        # the cell's four corners come packed in one number (the gather is the costly part)
        code = table[(iy * float(W + 2) + ix + off).long()]  # exact in fp32 below 2^24
        b11 = torch.floor(code * 0.125)
        code = code - 8 * b11
        b01 = torch.floor(code * 0.25)
        code = code - 4 * b01
        b10 = torch.floor(code * 0.5)
        b00 = code - 2 * b10
        cov = (b00 + (b10 - b00) * wx) * (1 - wy) + (b01 + (b11 - b01) * wx) * wy  # [B, L, N]
        # what each layer shows: its coverage times what the layers in front leave uncovered
        shares = []
        left = torch.ones_like(cov[:, 0])
        for k in range(L - 1, -1, -1):  # front to back
            shares.append(cov[:, k] * left)
            left = left * (1 - cov[:, k])
        share = torch.stack(shares[::-1], 1)  # [B, L, N]; the plate shows by `left`
        top, which = torch.topk(share, 2, dim=1)  # [B, 2, N]: the two layers that show most
        gx = torch.gather(sx, 1, which) * (2.0 / W) - 1  # grid_sample's [-1, 1]
        gy = torch.gather(sy, 1, which) * (2.0 / H) - 1
        N = sx.shape[-1]
        ref = self.ref_rgb.to(T.dtype).expand(B, 3, H, W)
        rgb = F.grid_sample(ref, torch.stack([gx, gy], -1).reshape(B, 1, 2 * N, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)[:, :, 0].reshape(B, 3, 2, N)
        w1, w2, wp = top[:, None, 0], top[:, None, 1], left[:, None]  # [B, 1, N]
        val = (w1 * rgb[:, :, 0] + w2 * rgb[:, :, 1] + wp * plate_n) / (w1 + w2 + wp).clamp_min(1e-6)
        plate = self.plate.to(T.dtype).reshape(1, 3, H * W)
        out = plate.expand(B, 3, H * W).scatter(2, idx.expand(B, 3, -1), val).reshape(B, 3, H, W)
        with torch.no_grad():  # the layer that shows most, where it shows more than the plate
            front = torch.where(top[:, 0] > left, which[:, 0].to(T.dtype) + 1, torch.zeros_like(left))
        rank = torch.zeros(B, H * W, dtype=T.dtype, device=T.device).scatter(1, idx.expand(B, -1), front)
        return out.to(dtype), rank.reshape(B, H, W).to(dtype)


def _rebuild_tables(module: LayeredWarp, _incompatible_keys) -> None:
    module._tables(module.plate.device)


def endpin_of(instrument: str, instrument_points: np.ndarray) -> np.ndarray | None:
    """The endpin [2] from a frame's instrument points (cello), else None."""
    names = instrument_point_names(instrument)
    return None if "endpin" not in names else np.asarray(instrument_points[names.index("endpin")], np.float32)



# --------------------------------------------------------------------------- building a reference


@dataclass
class Reference:
    """What a performer looks like: the frame at rest, the room, the parts, the rest pose."""

    instrument: str
    rgb: np.ndarray  # [H, W, 3] uint8, the performer at rest
    plate: np.ndarray  # [H, W, 3] uint8, the room without the performer
    labels: np.ndarray  # [H, W] uint8 layer ids of ``rgb`` (LABELS, SLIDE_OUTER)
    keypoints: np.ndarray  # [67, 2] float32, normalised
    instrument_points: np.ndarray | None  # [K, 2] float32, normalised, or None
    sway_gain: float  # the cello body's turn per radian of upper-body turn
    source: str  # where it was taken from: "<clip id>#<frame>"
    reach: np.ndarray | None = None  # [H, W] bool, the pixels a part can reach; None: all

    def warp(self) -> LayeredWarp:
        """A :class:`LayeredWarp` holding this reference."""
        H, W = self.labels.shape
        return LayeredWarp(self.instrument, (H, W)).set_reference(*self.tensors())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, float, Tensor | None]:
        """The arguments of :meth:`LayeredWarp.set_reference`."""
        endpin = None
        if self.instrument_points is not None:
            e = endpin_of(self.instrument, self.instrument_points)
            endpin = None if e is None else torch.from_numpy(e)
        rgb = torch.from_numpy(self.rgb).permute(2, 0, 1).float() / 255
        plate = torch.from_numpy(self.plate).permute(2, 0, 1).float() / 255
        reach = None if self.reach is None else torch.from_numpy(self.reach)
        return (rgb, plate, torch.from_numpy(self.labels), torch.from_numpy(self.keypoints), endpin,
                self.sway_gain, reach)


def rest_frame(keypoints: np.ndarray, confidence: np.ndarray) -> int:
    """The frame whose pose is nearest the clip's mean pose (points it has, confidence-weighted)."""
    w = confidence.astype(np.float64)
    mean = (keypoints * w[..., None]).sum(0) / np.maximum(w.sum(0), 1e-9)[:, None]
    d = (((keypoints - mean) ** 2).sum(-1) * w).sum(-1)
    return int(np.argmin(d))


def room_plate(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The room without the performer: per pixel, the median of ``frames`` [T, H, W, 3]
    over the frames where ``background`` [T, H, W] holds. A pixel never seen as background
    is always behind the performer; it takes the median over all frames (what is usually
    there: a hole the warp leaves in the body then shows the body, not the wall; measured
    0.7 dB better than inpainting the wall into it). -> [H, W, 3] uint8."""
    f = frames.astype(np.float32)
    whole = np.median(f, axis=0)
    f[~background] = np.nan
    seen = background.any(0)
    with warnings.catch_warnings():  # pixels never seen as background are all NaN: replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(f, axis=0)
    out = np.where(seen[..., None], med, whole)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def reach_of(foreground: np.ndarray, margin: int) -> np.ndarray:
    """The pixels a part can reach: where ``foreground`` [T, H, W] ever holds, grown by
    ``margin`` pixels every way (a square neighbourhood). -> [H, W] bool."""
    seen = torch.from_numpy(np.ascontiguousarray(foreground.any(0)))[None, None].float()
    grown = F.max_pool2d(seen, 2 * margin + 1, stride=1, padding=margin) if margin > 0 else seen
    return grown[0, 0].numpy() > 0


def reference_from_clip(clip, size: tuple[int, int] | None = None, plate_stride: int = 2,
                        reach_margin: float = 0.06) -> Reference:
    """The reference of a clip with part maps (a synthetic clip of dataset format 2, or one
    ``data prepare`` made from a video with MediaPipe's silhouettes): its frame
    nearest the mean pose, the room as the per-pixel median of the frames where the part
    map says background (:func:`room_plate`), and (cello) the body's sway gain fitted over the clip.
    The pixels a part can reach are those the performer covers in any of the clip's frames,
    grown by ``reach_margin`` of the frame's width.
    ``size``: (height, width) to crop and resize to, like the training data."""
    from letsplay.models.data.torch_dataset import (
        _fit_frames,
        _fit_labels,
        _fit_points,
        clip_instrument_points,
        clip_parts,
    )

    parts = clip_parts(clip)
    if parts is None:
        raise ValueError(f"clip {clip.id} has no part maps (parts.npz): a reference needs a synthetic clip of "
                         f"dataset format 2, or a video prepared with MediaPipe (letsplay data prepare without "
                         f"--openpose)")
    labels, names = parts
    lut = np.zeros(256, np.uint8)  # stored ids -> LABELS (the same today; remapped by name to be safe)
    for i, n in enumerate(names):
        if n not in LABELS:
            raise ValueError(f"clip {clip.id}: unknown part label {n!r}")
        lut[i] = LABELS[n]
    labels = lut[labels]
    kp, conf = clip.keypoints()
    ip = clip_instrument_points(clip)
    frames = clip.frames(0, clip.n_frames)
    T, h, w, _ = frames.shape
    if size is not None and (h, w) != tuple(size):
        frames, kp, conf = _fit_frames(frames, kp, conf, *size)
        labels = _fit_labels(labels, *size)
        if ip is not None:
            pts, _ = _fit_points(ip.points, np.ones(ip.points.shape[:2], np.float32), h, w, *size)
            ip = type(ip)(pts, ip.confidence, ip.names)
        h, w = size
    r = rest_frame(kp, conf)
    plate = room_plate(frames[::plate_stride], labels[::plate_stride] == LABELS["background"])
    ref_labels = labels[r]
    ref_ip = None if ip is None else ip.points[r].astype(np.float32)
    scale = np.array([w, h], np.float64)
    if clip.instrument == "trombone" and ref_ip is not None:
        ref_labels = split_slide(ref_labels, kp[r] * scale, ref_ip * scale)
    gain = fit_cello_sway(kp, ip.points) if clip.instrument == "cello" and ip is not None else 0.0
    reach = reach_of(labels != LABELS["background"], int(round(reach_margin * w)))
    return Reference(clip.instrument, frames[r].copy(), plate, ref_labels.astype(np.uint8),
                     kp[r].astype(np.float32), ref_ip, gain, f"{clip.id}#{r}", reach)
