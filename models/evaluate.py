"""Evaluation on pieces held out from training (paper section IV, Tables I-III), every
figure beside its trivial baseline (the ablation study is :mod:`letsplay.models.ablation`).

Frames are generated the way the engine makes them: :meth:`Performer.step` frame by
frame over whole held-out clips, state carried from the clip's first frame, noise z = 0.

Rows (each scored on the same clips and frames):

* ``model`` -- the performer as it runs;
* ``still_picture`` -- the clip's per-pixel median of the real frames, shown for every
  frame: the best constant image (image metrics only);
* ``still_pose`` -- the clip's mean real keypoints held for every frame (keypoint
  error and sync);
* ``renderer_only`` -- the model's generator (CVG + STU) fed the real keypoints instead
  of KHP's: their heatmap (alpha from the confidence) and the real points for the GCN,
  stepped frame by frame with its state carried like the model (image metrics); what
  the renderer reaches with perfect keypoints;
* ``ground_truth`` -- the real keypoints' sync: the ceiling of the sync metric.

Image metrics (frames mapped from [-1, 1] to [0, 1]):

* ``psnr`` -- dB, per frame, averaged over all frames (Tables I and III);
* ``ssim`` -- Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), per RGB channel,
  averaged over channels and frames (Tables I and III); implemented here;
* ``psnr_moving`` -- PSNR over the pixels that move: per frame, the pixels where the real
  frame differs from its clip's still picture by more than :data:`MOVING_THRESHOLD` in
  any channel; the squared error over those pixels (all channels) is pooled over the
  clip into one MSE and PSNR, then averaged over clips. A constant image is judged
  where it is weakest, on the performer;
* ``checkerboard`` -- 2-pixel-period energy of the generated frames relative to the
  real ones' (:func:`nyquist_energy`): the energy of the Nyquist row and column of
  each frame's 2-D DFT of its luminance, summed over all frames, generated / real.
  1.0 = as much as the real frames; well above 1 = checkerboard artefacts;
* ``thin_part`` -- is the instrument's thin moving part drawn (cello: the bow; trombone:
  the slide)? Of the part's pixels in the real frames' part maps that the clip's still
  picture gets wrong (some channel off by more than :data:`PART_TOLERANCE`: where the
  part has moved to), the share the generated frame matches: some pixel within
  :data:`PART_RADIUS` has the real colour to within :data:`PART_TOLERANCE` in every
  channel (:func:`part_matches`). None for clips without part maps (format 1);
* ``temporal`` -- mean absolute error of the frame-to-frame differences against the
  ground truth's, ``|(G_t - G_{t-1}) - (R_t - R_{t-1})|`` (0 = the motion between frames
  is exactly the real one; flicker and frozen frames both raise it).

Keypoints:

* ``kp_dist`` -- mean Euclidean distance between predicted and real keypoints in
  normalised coordinates (Table II), over points the data has (confidence > 0);
* ``sync`` -- do the bowing / sliding hand's motion events fall on the note onsets?
  (:mod:`letsplay.models.sync`) :func:`motion_events` finds the events (speed minima of the right wrist after real
  travel: bow reversals, slide arrivals), :func:`sync_counts` matches them one to one
  with the onset frames within +-:data:`SYNC_TOLERANCE` frames and :func:`pool_sync`
  turns the counts into an F1, its chance level and the chance-corrected
  ``c = (f1 - chance) / (1 - chance)``: ~0 for events at random frames or a jittering
  hand, 1 for events exactly on the onsets, below 0 for a hand that never moves.
  Note onsets come from the dataset's ``notes.json`` (synthetic data); None without notes.

With ``kp_only`` (KHP alone, the ablation's Table II) only the keypoint rows (model,
still pose, ground truth) are computed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from letsplay.models.performer import Performer, PerformerState
from letsplay.models.sync import (
    RIGHT_WRIST,
    SyncCounts,
    SyncScore,
    motion_events,
    onset_frames,
    pool_sync,
    sync_counts,
)
from letsplay.models.warp import LABELS

log = logging.getLogger(__name__)

ROW_NAMES = ("model", "still_picture", "still_pose", "renderer_only", "ground_truth")
ROW_LABELS = {"model": "model", "still_picture": "still picture", "still_pose": "still pose",
              "renderer_only": "renderer only", "ground_truth": "ground truth"}
MOVING_THRESHOLD = 0.05  # a pixel moves where the real frame differs from the still picture by more
# The instrument's thin moving part, scored by :func:`part_matches` (a name of the part maps' LABELS).
THIN_PART: dict[str, str] = {"cello": "bow", "trombone": "slide"}
PART_RADIUS = 1  # pixels: the part map is drawn without anti-aliasing, the frame with it
PART_TOLERANCE = 0.1  # colour: largest channel difference, in [0, 1] units

# --------------------------------------------------------------------------- image metrics


def psnr(fake: Tensor, real: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``[N, C, H, W]`` images in [0, 1] -> ``[N]``."""
    mse = (fake - real).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def _psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


@functools.lru_cache(maxsize=8)
def _gaussian_band(n: int, window: int, sigma: float) -> Tensor:
    """``[n, n - window + 1]``: column ``j`` holds the Gaussian at rows ``j .. j + window - 1``,
    so ``x @ band`` is the valid 1-D Gaussian filter along ``x``'s last axis."""
    g = _gaussian(window, sigma)
    band = torch.zeros(n, n - window + 1)
    for j in range(n - window + 1):
        band[j:j + window, j] = g
    return band


def ssim(fake: Tensor, real: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of ``[N, C, H, W]`` images in [0, 1] -> ``[N]`` (Gaussian window,
    K1 = 0.01, K2 = 0.03, valid region only, mean over channels and positions).

    The five local means (x, y, x², y², xy) are filtered together as two matrix products
    with banded Gaussian matrices (the separable filter, far faster on a CPU than a
    per-channel convolution); the variances and the index are formed in float64."""
    N, C, H, W = fake.shape
    if H < window or W < window:
        window = min(H, W) | 1 if min(H, W) % 2 else min(H, W) - 1
    x, y = fake.float(), real.float()
    stack = torch.stack([x, y, x * x, y * y, x * y])  # [5, N, C, H, W]
    bh = _gaussian_band(H, window, sigma).to(x.device)
    bw = _gaussian_band(W, window, sigma).to(x.device)
    mx, my, xx, yy, xy = (bh.T @ (stack @ bw)).double()  # each [N, C, H', W']
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def nyquist_energy(frames: Tensor) -> Tensor:
    """2-pixel-period energy of ``[N, 3, H, W]`` RGB frames in [0, 1] -> ``[N]``.

    With ``Y`` the luminance (0.299 R + 0.587 G + 0.114 B) and ``D = fft2(Y)``, the
    energy of the Nyquist row and column: ``sum_v |D[H/2, v]|^2 + sum_u |D[u, W/2]|^2
    - |D[H/2, W/2]|^2`` (the shared corner counted once). Computed without an FFT by
    Parseval: the Nyquist row is the DFT of ``r[x] = sum_y (-1)^y Y[y, x]``, so its
    energy is ``W sum_x r[x]^2``; likewise the column. Meant for even H and W (for odd
    sizes the index H // 2 is the highest frequency, not exactly Nyquist)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"nyquist_energy needs RGB frames [N, 3, H, W], got {tuple(frames.shape)}")
    x = frames.double()
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # [N, H, W]
    H, W = y.shape[-2:]
    sy = (1 - 2 * (torch.arange(H, device=y.device) % 2)).to(y)  # (-1)^y
    sx = (1 - 2 * (torch.arange(W, device=y.device) % 2)).to(y)
    r = (y * sy[:, None]).sum(1)  # [N, W]
    c = (y * sx[None, :]).sum(2)  # [N, H]
    corner = (y * sy[:, None] * sx[None, :]).sum((1, 2))
    return (W * r.pow(2).sum(1) + H * c.pow(2).sum(1) - corner.pow(2)).float()


def still_picture(real: np.ndarray | Tensor) -> Tensor:
    """The per-pixel median over frames ``[T, 3, H, W]`` -> ``[3, H, W]`` (float, in the
    frames' units; the mean of the two middle values for an even count, like np.median)."""
    a = real.cpu().numpy() if isinstance(real, Tensor) else np.asarray(real)
    return torch.from_numpy(np.median(a, axis=0).astype(np.float32))


def moving_mask(real: Tensor, still: Tensor, threshold: float = MOVING_THRESHOLD) -> Tensor:
    """Pixels that move: ``[T, 3, H, W]`` frames and their ``[3, H, W]`` still picture in
    [0, 1] -> bool ``[T, H, W]``, True where any channel differs by more than ``threshold``."""
    return ((real - still[None]).abs() > threshold).any(dim=1)


def part_matches(fake: Tensor, real: Tensor, mask: Tensor, radius: int = PART_RADIUS,
                 tolerance: float = PART_TOLERANCE) -> tuple[int, int]:
    """Is a part drawn? ``fake``, ``real`` ``[N, 3, H, W]`` in [0, 1], ``mask`` bool
    ``[N, H, W]`` (the real frame's part-map pixels of the part) -> (matched, total): a
    part pixel is matched where some generated pixel within ``radius`` (the part map is
    drawn without anti-aliasing, the frame with it) has the real pixel's colour to within
    ``tolerance`` in every channel. A picture without the part matches it only where the
    part happens to have the colour of what is behind it."""
    if not bool(mask.any()):
        return 0, 0
    k = 2 * radius + 1
    H, W = real.shape[-2:]
    padded = F.pad(fake, (radius, radius, radius, radius), mode="replicate")
    best = torch.full(mask.shape, float("inf"), device=real.device)
    for dy in range(k):
        for dx in range(k):
            d = (padded[..., dy:dy + H, dx:dx + W] - real).abs().amax(1)
            best = torch.minimum(best, d)
    return int((best[mask] <= tolerance).sum()), int(mask.sum())


# --------------------------------------------------------------------------- evaluation


@dataclass
class RowResult:
    """One row's figures; None where the figure does not apply to the row."""

    psnr: float | None = None  # dB
    ssim: float | None = None
    psnr_moving: float | None = None  # dB over the moving pixels
    checkerboard: float | None = None  # 2-pixel-period energy / the real frames'
    kp_dist: float | None = None  # normalised coordinates
    temporal: float | None = None  # mean |diff(G) - diff(R)| in [0, 1] units
    sync: SyncScore | None = None
    arm_amplitude: float | None = None  # RMS of the right wrist about its clip mean (normalised units)
    thin_part: float | None = None  # share of the bow's / slide's moved pixels the frames match (part_matches)
    onset_recall: float | None = None  # KHP's motion heads (keypoints only): notes whose onset it found (+-1 frame)
    onset_precision: float | None = None  # ... and of its onsets, the share on a note
    bow_direction: float | None = None  # ... cello: share of the frames its bow direction state is right (chance 1/2)


@dataclass
class EvalResult:
    rows: dict[str, RowResult]  # by ROW_NAMES; only the rows computed
    frames: int
    clips: int
    seconds: float  # wall time of the evaluation
    kp_only: bool = False
    per_clip: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> RowResult:
        return self.rows["model"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def renderer_only_step(model: Performer, window: Tensor, keypoints: Tensor, confidence: Tensor,
                       state: PerformerState, z: Tensor | None = None) -> tuple[Tensor, PerformerState]:
    """One frame of the model's generator fed given keypoints instead of KHP's: window
    ``[B, n_bins, window_columns]``, keypoints ``[B, 67, 2]``, confidence ``[B, 67]`` ->
    frame ``[B, 3, H, W]`` in [-1, 1] and the new state. The heatmap is the model's DLT
    of the keypoints with alpha = confidence x the model's heatmap alpha (points the data
    lacks are not drawn); the STU's GCN gets the keypoints. KHP is not run (its state is
    passed through); the CVG and the STU carry their state as in :meth:`Performer.step`; a
    warp performer's coarse frame is its reference warped to the given keypoints."""
    if model.khp is None:
        raise ValueError("renderer_only_step needs a model with KHP (its heatmap feeds the STU)")
    coarse_up = cvg_state = None
    if model.cvg is not None:
        coarse_up, cvg_state = model.cvg.step(window, state.cvg, z)
        if coarse_up.shape[-2:] != model.cfg.work_size:
            coarse_up = F.interpolate(coarse_up, size=model.cfg.work_size, mode="bilinear", align_corners=False)
    elif model.warp is not None:  # the reference warped to the given pose (the residual STU's size)
        coarse_up = model.coarse_of(keypoints)
    hm = model.khp.heatmap(keypoints, confidence * model.khp.cfg.heatmap_alpha)
    mid, stu_state = model.stu.encode(coarse_up, hm, window, state.stu)
    frame = model.stu.decode(mid, keypoints)
    return frame, PerformerState(khp=state.khp, cvg=cvg_state, stu=stu_state)


class _ImageAcc:
    """Running image metrics of one row over all clips."""

    def __init__(self) -> None:
        self.psnr = self.ssim = self.temp = self.temp_n = self.nyq = 0.0
        self.moving: list[float] = []  # per clip PSNR over moving pixels
        self.part_hit = self.part_n = 0  # thin-part pixels matched, in all

    def frame(self, g: Tensor, r: Tensor, prev: tuple[Tensor, Tensor] | None) -> tuple[float, float]:
        p, s = float(psnr(g, r)), float(ssim(g, r))
        self.psnr, self.ssim = self.psnr + p, self.ssim + s
        self.nyq += float(nyquist_energy(g).sum())
        if prev is not None:
            self.temp += float(((g - prev[0]) - (r - prev[1])).abs().mean())
            self.temp_n += 1
        return p, s

    def parts(self, g: Tensor, r: Tensor, part: Tensor) -> None:
        hit, n = part_matches(g, r, part)
        self.part_hit, self.part_n = self.part_hit + hit, self.part_n + n

    def result(self, n: int, nyq_real: float, temporal: bool) -> RowResult:
        return RowResult(psnr=self.psnr / n, ssim=self.ssim / n,
                         thin_part=self.part_hit / self.part_n if self.part_n else None,
                         psnr_moving=float(np.mean(self.moving)) if self.moving else None,
                         checkerboard=self.nyq / nyq_real if nyq_real > 0 else None,
                         temporal=self.temp / max(1.0, self.temp_n) if temporal else None)


def _clip_notes(clip: Any) -> list[Any] | None:
    if not hasattr(clip, "notes"):
        return None
    try:
        return clip.notes() or None
    except (OSError, ValueError, KeyError):
        return None


def _motion_onsets(motion: np.ndarray, notes: list[Any], fps: float, instrument: str
                   ) -> dict[str, tuple[float, float]]:
    """How the motion heads heard a clip (``motion [T, 6]``, :data:`MOTION_CHANNELS`):
    ``{"onset_recall": (notes found, notes), "onset_precision": (onsets on a note, onsets),
    "bow_direction": (frames right, frames)}``. Its onsets are where the onset probability
    rises through 1/2 (the frames where its direction state flips); a note is found by one
    of them within one frame of the note's (one to one). The direction (cello) is compared
    with the data's bowing (:func:`~letsplay.models.motion_targets.bow_direction`)."""
    from letsplay.models.motion_targets import bow_direction
    from letsplay.models.sync import match_count

    n = len(motion)
    p = 1.0 / (1.0 + np.exp(-motion[:, 0].astype(np.float64)))
    before = np.concatenate([[0.0], p[:-1]])
    events = np.flatnonzero((p > 0.5) & (before <= 0.5))
    onsets = onset_frames(notes, fps, n)
    m = match_count(events, onsets, 1)
    out = {"onset_recall": (float(m), float(len(onsets))), "onset_precision": (float(m), float(len(events)))}
    if instrument == "cello":
        real = bow_direction([_as_note(x) for x in notes], n, fps)
        out["bow_direction"] = (float(((motion[:, 1] > 0.5) == (real > 0.5)).sum()), float(n))
    return out


def _as_note(x: Any) -> Any:
    from letsplay.models.data.scores import Note

    if hasattr(x, "onset"):
        return x
    return Note(float(x[0]), float(x[1]), int(x[2]), int(x[3]))


def _kp_error(pred: np.ndarray, real: np.ndarray, conf: np.ndarray) -> tuple[float, float]:
    """(sum of distances, points counted) over points with confidence > 0."""
    d = np.linalg.norm(pred - real, axis=-1)
    ok = conf > 0
    return float((d * ok).sum()), float(ok.sum())


def arm_displacement_sq(kp: np.ndarray) -> float:
    """Sum over frames of the right wrist's squared distance from its mean position in
    keypoints ``[T, 67, 2]``: how far the bowing (cello) or slide (trombone) hand travels."""
    w = kp[:, RIGHT_WRIST].astype(np.float64)
    return float(((w - w.mean(0)) ** 2).sum())


def _mean_pose(real: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """The clip's mean keypoints ``[67, 2]`` over the frames that have each point."""
    ok = (conf > 0)[..., None]
    n = ok.sum(0)
    return np.where(n > 0, (real * ok).sum(0) / np.maximum(n, 1), real.mean(0)).astype(np.float32)


@torch.inference_mode()
def evaluate(model: Performer, clips: list[Any], max_seconds: float | None = None, device: str = "cpu",
             chunk: int = 30, strip: str | Path | None = None, strip_frames: int = 6,
             kp_only: bool = False, progress: bool = True, renderer_only: bool = True) -> EvalResult:
    """Run ``model`` step by step over each clip (from its first frame) and score it
    beside its baselines (module docstring). ``renderer_only=False`` skips that row
    (it costs as much as the model's own pass); it is skipped too for a model without KHP."""
    if kp_only and model.khp is None:
        raise ValueError("kp_only evaluation needs a model with KHP")
    from tqdm import tqdm

    from letsplay.models.data.torch_dataset import PerformanceDataset

    cfg = model.cfg
    model = model.to(device).eval()
    t0 = time.perf_counter()
    do_ro = renderer_only and not kp_only and model.khp is not None
    if renderer_only and not kp_only and model.khp is None:
        log.info("no renderer-only row: the model has no KHP, its generator takes no keypoints")
    images = {} if kp_only else {k: _ImageAcc() for k in ("model", "still_picture") + (("renderer_only",) if do_ro
                                                                                        else ())}
    nyq_real = 0.0
    kp_sum = {"model": [0.0, 0.0], "still_pose": [0.0, 0.0]}
    amp_sum = {"model": [0.0, 0], "ground_truth": [0.0, 0]}  # squared wrist displacement, frames
    motion_sum = {k: [0.0, 0.0] for k in ("onset_recall", "onset_precision", "bow_direction")}  # hits, counted
    sync: dict[str, list[SyncCounts]] = {"model": [], "still_pose": [], "ground_truth": []}
    n_frames = 0
    per_clip = []
    strip_rows: tuple[list[np.ndarray], ...] | None = None  # ground truth, model (, renderer only)
    total = sum(min(c.n_frames, int(max_seconds * c.fps) if max_seconds else c.n_frames) // chunk * chunk
                for c in clips)
    bar = tqdm(total=total, desc="eval", unit="frame", disable=not progress, dynamic_ncols=True)
    for ci, clip in enumerate(clips):
        n = clip.n_frames if max_seconds is None else min(clip.n_frames, int(max_seconds * clip.fps))
        n = n // chunk * chunk
        if n < chunk:
            log.warning("clip %s is shorter than %d frames; skipped", clip.id, chunk)
            continue
        ds = PerformanceDataset([clip], chunk, cfg.audio, cfg.video, stride=chunk,
                                cache_dir=_cache_dir(clip))
        ds.with_frames = not kp_only  # keypoints only: no frames read, only KHP stepped
        ds.with_parts = not kp_only  # the thin part's pixels (format 2; none for other clips)
        state = model.init_state(1, device)
        ro_state = model.init_state(1, device)
        khp_state = state.khp
        kps_p, kps_r, confs, motion_p = [], [], [], []
        prev: dict[str, tuple[Tensor, Tensor] | None] = {"model": None, "renderer_only": None}
        clip_img = {k: [0.0, 0.0] for k in images}
        want = set(np.linspace(0, n - 1, strip_frames).round().astype(int).tolist()) if ci == 0 else set()
        gts, gens, gens_ro = [], [], []
        reals_u8: list[Tensor] = []
        part_masks: list[Tensor] = []
        fakes: dict[str, list[Tensor]] = {"model": [], "renderer_only": []}
        for i in range(n // chunk):
            item = ds[i]
            windows = item["cqt"].to(device)  # [T, F, W]
            kps_r.append(item["keypoints"].numpy())
            confs.append(item["confidence"].numpy())
            real = None if kp_only else (item["frames"].to(device) + 1) / 2  # [T, 3, H, W] in [0, 1]
            if real is not None:
                reals_u8.append((real * 255.0).round().clamp(0, 255).to(torch.uint8).cpu())
                part_masks.append(item["parts"] == LABELS[THIN_PART[cfg.instrument]] if "parts" in item
                                  else torch.zeros(chunk, *real.shape[-2:], dtype=torch.bool))
                nyq_real += float(nyquist_energy(real).sum())
            for t in range(chunk):
                w = windows[t:t + 1]
                if kp_only:
                    out, khp_state = model.khp.step(w, khp_state, with_heatmap=False)
                else:
                    out, state = model.step(w, state)
                if out.keypoints is not None:
                    kps_p.append(out.keypoints[0].float().cpu().numpy())
                if kp_only:
                    if out.motion is not None:
                        motion_p.append(out.motion[0].float().cpu().numpy())
                    continue
                r = real[t:t + 1]
                g = ((out.frame.float() + 1) / 2).clamp(0, 1)  # [1, 3, H, W]
                p, s = images["model"].frame(g, r, prev["model"])
                clip_img["model"][0] += p
                clip_img["model"][1] += s
                prev["model"] = (g, r)
                fakes["model"].append(g[0].half().cpu())
                if do_ro:
                    kp_t = item["keypoints"][t:t + 1].to(device)
                    cf_t = item["confidence"][t:t + 1].to(device)
                    fr, ro_state = renderer_only_step(model, w, kp_t, cf_t, ro_state)
                    g2 = ((fr.float() + 1) / 2).clamp(0, 1)
                    p, s = images["renderer_only"].frame(g2, r, prev["renderer_only"])
                    clip_img["renderer_only"][0] += p
                    clip_img["renderer_only"][1] += s
                    prev["renderer_only"] = (g2, r)
                    fakes["renderer_only"].append(g2[0].half().cpu())
                fi = i * chunk + t
                if fi in want:
                    gts.append(_to_uint8(r[0]))
                    gens.append(_to_uint8(g[0]))
                    if do_ro:
                        gens_ro.append(_to_uint8(g2[0]))
            bar.update(chunk)
        n_frames += n
        rec: dict[str, Any] = {"clip": clip.id, "frames": n, "rows": {}}
        if not kp_only:
            _still_picture_clip(images, reals_u8, fakes, clip_img, rec, part_masks)
        # keypoints
        real_kp, conf = np.concatenate(kps_r), np.concatenate(confs)
        still = np.broadcast_to(_mean_pose(real_kp, conf), real_kp.shape)
        pred_kp = np.stack(kps_p) if kps_p else None
        for name, kp in (("model", pred_kp), ("still_pose", still)):
            if kp is None:
                continue
            a, b = _kp_error(kp, real_kp, conf)
            kp_sum[name][0] += a
            kp_sum[name][1] += b
            rec["rows"].setdefault(name, {})["kp_dist"] = a / b if b else None
        for name, kp in (("model", pred_kp), ("ground_truth", real_kp)):
            if kp is None:
                continue
            sq = arm_displacement_sq(kp)
            amp_sum[name][0] += sq
            amp_sum[name][1] += len(kp)
            rec["rows"].setdefault(name, {})["arm_amplitude"] = float(np.sqrt(sq / max(len(kp), 1)))
        notes = _clip_notes(clip)
        if notes and motion_p:
            heard = _motion_onsets(np.stack(motion_p), notes, clip.fps, cfg.instrument)
            for k, v in heard.items():
                motion_sum[k][0] += v[0]
                motion_sum[k][1] += v[1]
                rec["rows"].setdefault("model", {})[k] = v[0] / v[1] if v[1] else None
        if notes:
            onsets = onset_frames(notes, clip.fps, n)
            for name, kp in (("model", pred_kp), ("still_pose", still), ("ground_truth", real_kp)):
                if kp is None:
                    continue
                cnt = sync_counts(motion_events(kp, cfg.instrument), onsets, n, seed=ci)
                sync[name].append(cnt)
                sc = pool_sync([cnt])
                rec["rows"].setdefault(name, {})["sync_c"] = None if sc is None else sc.c
        per_clip.append(rec)
        if gts and strip_rows is None:
            strip_rows = (gts, gens) + ((gens_ro,) if gens_ro else ())
    bar.close()
    if n_frames == 0:
        raise ValueError("no clip long enough to evaluate; use longer clips or a smaller chunk")
    if strip is not None and strip_rows is not None:
        write_strip(strip, *strip_rows)
    rows: dict[str, RowResult] = {}
    has_kp = kp_sum["model"][1] > 0
    rows["model"] = images["model"].result(n_frames, nyq_real, True) if images else RowResult()
    rows["model"].kp_dist = kp_sum["model"][0] / kp_sum["model"][1] if has_kp else None
    rows["model"].sync = pool_sync(sync["model"])
    if images:
        rows["still_picture"] = images["still_picture"].result(n_frames, nyq_real, False)
    rows["still_pose"] = RowResult(kp_dist=kp_sum["still_pose"][0] / max(kp_sum["still_pose"][1], 1.0),
                                   sync=pool_sync(sync["still_pose"]))
    if "renderer_only" in images:
        rows["renderer_only"] = images["renderer_only"].result(n_frames, nyq_real, True)
    rows["ground_truth"] = RowResult(sync=pool_sync(sync["ground_truth"]))
    for name in ("model", "ground_truth"):
        if amp_sum[name][1]:
            rows[name].arm_amplitude = float(np.sqrt(amp_sum[name][0] / amp_sum[name][1]))
    if kp_sum["still_pose"][1]:
        rows["still_pose"].arm_amplitude = 0.0
    for k, (hit, counted) in motion_sum.items():
        if counted:
            setattr(rows["model"], k, hit / counted)
    rows = {k: rows[k] for k in ROW_NAMES if k in rows}
    return EvalResult(rows=rows, frames=n_frames, clips=len(per_clip), seconds=time.perf_counter() - t0,
                      kp_only=kp_only, per_clip=per_clip)


def _still_picture_clip(images: dict[str, _ImageAcc], reals_u8: list[Tensor], fakes: dict[str, list[Tensor]],
                        clip_img: dict[str, list[float]], rec: dict[str, Any], part_masks: list[Tensor],
                        batch: int = 32) -> None:
    """A clip's still-picture row and every image row's moving-pixel PSNR (both need the
    clip's median frame, known only once the clip is read)."""
    real_u8 = torch.cat(reals_u8)  # [T, 3, H, W]
    masks = torch.cat(part_masks)  # [T, H, W] the thin part's pixels
    n = len(real_u8)
    still = still_picture(real_u8) / 255.0  # [3, H, W]
    acc = images["still_picture"]
    sq = {k: 0.0 for k in images}
    count = 0.0
    for s in range(0, n, batch):
        r = real_u8[s:s + batch].float() / 255.0
        m = moving_mask(r, still)[:, None].float()  # [b, 1, H, W]
        count += float(m.sum()) * 3
        g = still[None].expand_as(r)
        # the part's pixels that a constant image gets wrong: where the part moved to
        part = masks[s:s + batch] & ((r - still[None]).abs().amax(1) > PART_TOLERANCE)
        acc.parts(g, r, part)
        p, q = psnr(g, r), ssim(g, r)
        acc.psnr += float(p.sum())
        acc.ssim += float(q.sum())
        clip_img["still_picture"][0] += float(p.sum())
        clip_img["still_picture"][1] += float(q.sum())
        sq["still_picture"] += float(((g - r).pow(2) * m).sum())
        for k, fs in fakes.items():
            if k in images:
                f = torch.stack(fs[s:s + batch]).float()
                sq[k] += float(((f - r).pow(2) * m).sum())
                images[k].parts(f, r, part)
    acc.nyq += float(nyquist_energy(still[None])) * n
    for k in images:
        rec["rows"].setdefault(k, {}).update(psnr=clip_img[k][0] / n, ssim=clip_img[k][1] / n)
        if count > 0:
            pm = _psnr_of_mse(sq[k] / count)
            images[k].moving.append(pm)
            rec["rows"][k]["psnr_moving"] = pm


def _cache_dir(clip: Any) -> Path | None:
    root = getattr(clip, "root", None)
    return None if root is None else Path(root) / ".cache"


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _cell(x: Any, nd: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return str(x) if isinstance(x, int) else f"{x:.{nd}f}"


def _onset_cell(r: dict[str, Any]) -> str:
    if r.get("onset_recall") is None:
        return "-"
    return f"{_cell(r.get('onset_recall'), 2)}/{_cell(r.get('onset_precision'), 2)}"


def result_table(res: EvalResult | dict[str, Any]) -> str:
    """A compact text table of an evaluation's rows (``-`` where a row has no value)."""
    rows = res.to_dict()["rows"] if isinstance(res, EvalResult) else res["rows"]
    head = ("", "PSNR", "SSIM", "moving PSNR", "checker", "bow/slide", "kp error", "arm amp", "sync F1", "lag",
            "sync C", "onsets R/P", "bow dir")
    lines = [head]
    for name in ROW_NAMES:
        if name not in rows:
            continue
        r = rows[name]
        s = r.get("sync") or {}
        lines.append((ROW_LABELS[name], _cell(r.get("psnr"), 2), _cell(r.get("ssim"), 3),
                      _cell(r.get("psnr_moving"), 2), _cell(r.get("checkerboard"), 2), _cell(r.get("thin_part"), 3),
                      _cell(r.get("kp_dist"), 4),
                      _cell(r.get("arm_amplitude"), 4), _cell(s.get("f1"), 3), _cell(s.get("best_lag"), 0),
                      _cell(s.get("c"), 3), _onset_cell(r), _cell(r.get("bow_direction"), 3)))
    widths = [max(len(ln[i]) for ln in lines) for i in range(len(head))]
    out = []
    for ln in lines:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(ln, widths, strict=True))))
    return "\n".join(out)


def write_strip(path: str | Path, real: list[np.ndarray], *rows: list[np.ndarray]) -> None:
    """A PNG: ground-truth frames on top, each row of generated frames below it (RGB
    uint8 [H, W, 3] each; every row as long as ``real``)."""
    import cv2

    gap = 4
    h, w = real[0].shape[:2]
    grid = [real, *rows]
    canvas = np.full((len(grid) * (h + gap) - gap, len(real) * (w + gap) - gap, 3), 255, np.uint8)
    for j, row in enumerate(grid):
        if len(row) != len(real):
            raise ValueError(f"strip row {j} has {len(row)} frames, the ground truth {len(real)}")
        for i, frame in enumerate(row):
            canvas[j * (h + gap):j * (h + gap) + h, i * (w + gap):i * (w + gap) + w] = frame
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def held_out_clips(data: str | Path, split: str, instrument: str) -> list[Any]:
    from letsplay.models.data.torch_dataset import open_sources

    clips = open_sources(data, split=split, instrument=instrument)
    if not clips:
        raise ValueError(f"{data}: no {instrument} clips in split {split!r}; the dataset has none held out "
                         f"(make a bigger one: 'letsplay data synth' splits by piece)")
    return clips


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "test",
                        max_seconds: float | None = None, device: str = "cpu",
                        strip: str | Path | None = None, renderer_only: bool = True,
                        progress: bool = True, kp_only: bool = False) -> EvalResult:
    """Load a Performer checkpoint and :func:`evaluate` it on a dataset's held-out split."""
    model = Performer.load(checkpoint)
    if kp_only and strip is not None:
        raise ValueError("a strip shows frames; --keypoints-only makes none (drop one of the two)")
    return evaluate(model, held_out_clips(data, split, model.cfg.instrument), max_seconds, device, strip=strip,
                    renderer_only=renderer_only, progress=progress, kp_only=kp_only)
