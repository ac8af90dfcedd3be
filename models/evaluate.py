"""Evaluation on pieces held out from training (paper section IV, Tables I-III), and the
ablation study.

Frames are generated the way the engine makes them: :meth:`Performer.step` frame by
frame over whole held-out clips, state carried from the clip's first frame, noise z = 0.

Metrics (frames mapped from [-1, 1] to [0, 1]):

* ``psnr`` -- dB, per frame, averaged (Tables I and III);
* ``ssim`` -- Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), per RGB channel,
  averaged over channels and frames (Tables I and III); implemented here;
* ``kp_dist`` -- mean Euclidean distance between predicted and real keypoints in
  normalised coordinates (Table II), over points the data has (confidence > 0);
* ``temporal`` -- mean absolute error of the frame-to-frame differences against the
  ground truth's, ``|(G_t - G_{t-1}) - (R_t - R_{t-1})|`` (0 = the motion between frames
  is exactly the real one; flicker and frozen frames both raise it);
* ``sync`` -- the fraction of note onsets met by a motion event of the right wrist within
  +-1 frame in the *generated* keypoints. Cello: a bow reversal, a sign change of the
  wrist's horizontal velocity. Trombone: a slide move, a start or stop of the wrist's
  movement (the synthetic performer moves the slide in the lead before an onset and
  arrives at it); only onsets whose ground truth has such an event count, because a
  repeated slide position needs no move. ``sync_gt`` is the same detector on the real
  keypoints (its ceiling) and ``events_per_onset`` the generated events per counted
  onset (a jittering wrist would meet every onset with many events: this shows it).
  Note onsets come from the dataset's ``notes.json`` (synthetic data); None without notes.
"""

from __future__ import annotations

import dataclasses
import json
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

from letsplay.models.performer import Performer
from letsplay.models.skeleton import BODY_25_NAMES

log = logging.getLogger(__name__)

RIGHT_WRIST = BODY_25_NAMES.index("r_wrist")
SYNC_TOLERANCE = 1  # frames either side of the onset
CELLO_MIN_SPEED = 0.0008  # normalised units per frame: smaller horizontal moves keep the last direction
TROMBONE_MIN_SPEED = 0.0015  # normalised units per frame: "moving"


# --------------------------------------------------------------------------- image metrics


def psnr(fake: Tensor, real: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``[N, C, H, W]`` images in [0, 1] -> ``[N]``."""
    mse = (fake - real).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def ssim(fake: Tensor, real: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of ``[N, C, H, W]`` images in [0, 1] -> ``[N]`` (Gaussian window,
    K1 = 0.01, K2 = 0.03, valid region only, mean over channels and positions)."""
    N, C, H, W = fake.shape
    if H < window or W < window:
        window = min(H, W) | 1 if min(H, W) % 2 else min(H, W) - 1
    g = _gaussian(window, sigma).to(fake)
    kx = g.reshape(1, 1, 1, -1).expand(C, 1, 1, window)
    ky = g.reshape(1, 1, -1, 1).expand(C, 1, window, 1)

    def blur(x: Tensor) -> Tensor:  # separable Gaussian, per channel
        return F.conv2d(F.conv2d(x, kx, groups=C), ky, groups=C)

    x, y = fake.double(), real.double()
    kx, ky = kx.double(), ky.double()
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


# --------------------------------------------------------------------------- motion sync


def motion_events(kp: np.ndarray, instrument: str) -> np.ndarray:
    """Frames with a right-wrist motion event in keypoints ``[T, 67, 2]`` -> bool ``[T]``."""
    w = kp[:, RIGHT_WRIST]  # [T, 2]
    T = len(w)
    ev = np.zeros(T, bool)
    if T < 3:
        return ev
    v = np.diff(w, axis=0)  # v[t-1] = w[t] - w[t-1]
    if instrument == "cello":
        last = 0
        for t in range(1, T):
            vx = v[t - 1, 0]
            if abs(vx) < CELLO_MIN_SPEED:
                continue
            s = 1 if vx > 0 else -1
            if last and s != last:
                ev[t - 1] = True  # the turning point is the frame before the new direction
            last = s
        return ev
    moving = np.linalg.norm(v, axis=1) > TROMBONE_MIN_SPEED  # moving[t-1]: between t-1 and t
    change = np.flatnonzero(moving[1:] != moving[:-1]) + 1  # start or stop of a move
    ev[change] = True
    return ev


def sync_counts(pred: np.ndarray, real: np.ndarray, onsets: np.ndarray, instrument: str
                ) -> tuple[int, int, int, int]:
    """(onsets met by generated events, onsets met by real events, onsets counted, generated
    events) for onset frames ``onsets`` of one clip."""
    T = len(pred)
    ep, er = motion_events(pred, instrument), motion_events(real, instrument)
    met_p = met_r = counted = 0
    tol = SYNC_TOLERANCE
    for f in onsets:
        if f < 1 or f >= T - 1:
            continue
        lo, hi = max(0, f - tol), min(T, f + tol + 1)
        r = bool(er[lo:hi].any())
        if instrument != "cello" and not r:
            continue  # trombone: this onset needs no slide move
        counted += 1
        met_r += r
        met_p += bool(ep[lo:hi].any())
    return met_p, met_r, counted, int(ep.sum())


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    psnr: float  # dB
    ssim: float
    kp_dist: float | None  # normalised coordinates; None without KHP
    temporal: float  # mean |diff(G) - diff(R)| in [0, 1] units
    sync: float | None  # fraction of onsets met by a generated motion event
    sync_gt: float | None  # the same detector on the real keypoints
    events_per_onset: float | None
    frames: int
    clips: int
    seconds: float  # wall time of the evaluation
    per_clip: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


@torch.inference_mode()
def evaluate(model: Performer, clips: list[Any], max_seconds: float | None = None, device: str = "cpu",
             chunk: int = 30, strip: str | Path | None = None, strip_frames: int = 6,
             kp_only: bool = False, progress: bool = True) -> EvalResult:
    """Run ``model`` step by step over each clip (from its first frame) and score it."""
    if kp_only and model.khp is None:
        raise ValueError("kp_only evaluation needs a model with KHP")
    from tqdm import tqdm

    from letsplay.models.data.torch_dataset import PerformanceDataset

    cfg = model.cfg
    model = model.to(device).eval()
    t0 = time.perf_counter()
    tot: dict[str, float] = {"psnr": 0.0, "ssim": 0.0, "kp": 0.0, "kp_n": 0.0, "temp": 0.0, "temp_n": 0.0}
    n_frames = 0
    sync_p = sync_r = sync_n = events = 0
    per_clip = []
    strip_rows: tuple[list[np.ndarray], list[np.ndarray]] | None = None
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
        state = model.init_state(1, device)
        khp_state = state.khp
        kps_p, kps_r = [], []
        prev_g = prev_r = None
        c_psnr = c_ssim = 0.0
        want = set(np.linspace(0, n - 1, strip_frames).round().astype(int).tolist()) if ci == 0 else set()
        gts, gens = [], []
        for i in range(n // chunk):
            item = ds[i]
            windows = item["cqt"].to(device)  # [T, F, W]
            real = None if kp_only else (item["frames"].to(device) + 1) / 2  # [T, 3, H, W] in [0, 1]
            for t in range(chunk):
                if kp_only:
                    out, khp_state = model.khp.step(windows[t:t + 1], khp_state, with_heatmap=False)
                else:
                    out, state = model.step(windows[t:t + 1], state)
                if out.keypoints is not None:
                    kps_p.append(out.keypoints[0].float().cpu().numpy())
                    kps_r.append(item["keypoints"][t].numpy())
                    conf = item["confidence"][t]
                    d = (out.keypoints[0].cpu() - item["keypoints"][t]).norm(dim=-1)
                    tot["kp"] += float((d * (conf > 0)).sum())
                    tot["kp_n"] += float((conf > 0).sum())
                if kp_only:
                    continue
                g = ((out.frame.float() + 1) / 2).clamp(0, 1)  # [1, 3, H, W]
                r = real[t:t + 1]
                p, s = float(psnr(g, r)), float(ssim(g, r))
                c_psnr, c_ssim = c_psnr + p, c_ssim + s
                if prev_g is not None:
                    tot["temp"] += float(((g - prev_g) - (r - prev_r)).abs().mean())
                    tot["temp_n"] += 1
                prev_g, prev_r = g, r
                fi = i * chunk + t
                if fi in want:
                    gts.append(_to_uint8(r[0]))
                    gens.append(_to_uint8(g[0]))
            bar.update(chunk)
        tot["psnr"] += c_psnr
        tot["ssim"] += c_ssim
        n_frames += n
        rec: dict[str, Any] = {"clip": clip.id, "frames": n}
        if not kp_only:
            rec.update(psnr=c_psnr / n, ssim=c_ssim / n)
        if kps_p and hasattr(clip, "notes"):
            try:
                notes = clip.notes()
            except (OSError, ValueError, KeyError):
                notes = []
            if notes:
                onsets = np.array(sorted({int(round(nt[0] * clip.fps)) for nt in notes}))
                p_, r_, c_, e_ = sync_counts(np.stack(kps_p), np.stack(kps_r), onsets[onsets < n], cfg.instrument)
                sync_p, sync_r, sync_n, events = sync_p + p_, sync_r + r_, sync_n + c_, events + e_
                rec.update(sync=_ratio(p_, c_), sync_gt=_ratio(r_, c_))
        per_clip.append(rec)
        if gts and strip_rows is None:
            strip_rows = (gts, gens)
    bar.close()
    if n_frames == 0:
        raise ValueError("no clip long enough to evaluate; use longer clips or a smaller chunk")
    if strip is not None and strip_rows is not None:
        write_strip(strip, *strip_rows)
    return EvalResult(
        psnr=float("nan") if kp_only else tot["psnr"] / n_frames,
        ssim=float("nan") if kp_only else tot["ssim"] / n_frames,
        kp_dist=None if tot["kp_n"] == 0 else tot["kp"] / tot["kp_n"],
        temporal=float("nan") if kp_only else tot["temp"] / max(1.0, tot["temp_n"]),
        sync=_ratio(sync_p, sync_n), sync_gt=_ratio(sync_r, sync_n), events_per_onset=_ratio(events, sync_n),
        frames=n_frames, clips=len(per_clip), seconds=time.perf_counter() - t0, per_clip=per_clip)


def _cache_dir(clip: Any) -> Path | None:
    root = getattr(clip, "root", None)
    return None if root is None else Path(root) / ".cache"


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def write_strip(path: str | Path, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
    """A PNG: ground-truth frames on top, generated frames below (RGB uint8 [H, W, 3] each)."""
    import cv2

    gap = 4
    h, w = real[0].shape[:2]
    canvas = np.full((2 * h + gap, len(real) * (w + gap) - gap, 3), 255, np.uint8)
    for i, (a, b) in enumerate(zip(real, fake, strict=True)):
        x = i * (w + gap)
        canvas[:h, x:x + w] = a
        canvas[h + gap:, x:x + w] = b
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
                        strip: str | Path | None = None) -> EvalResult:
    model = Performer.load(checkpoint)
    return evaluate(model, held_out_clips(data, split, model.cfg.instrument), max_seconds, device, strip=strip)


# --------------------------------------------------------------------------- ablations

# The paper's published numbers (Tables I and II; Table III's "Ours" equals Table I's).
PAPER_TABLE_I: dict[str, dict[str, tuple[float, float]]] = {  # variant -> instrument -> (PSNR, SSIM)
    "no_cvg": {"cello": (15.073, 0.306), "trombone": (13.563, 0.206)},
    "no_khp": {"cello": (15.191, 0.465), "trombone": (14.753, 0.305)},
    "no_stu": {"cello": (15.767, 0.536), "trombone": (14.656, 0.362)},
    "no_gcn": {"cello": (16.253, 0.551), "trombone": (15.572, 0.395)},
    "no_gru": {"cello": (16.437, 0.548), "trombone": (15.519, 0.395)},
    "full": {"cello": (17.073, 0.563), "trombone": (15.910, 0.397)},
}
PAPER_TABLE_II: dict[str, dict[str, float]] = {  # variant -> instrument -> mean keypoint distance
    "kp_baseline": {"cello": 0.164, "trombone": 0.598},  # no avg condition, no DLT
    "kp_no_dlt": {"cello": 0.151, "trombone": 0.427},  # + avg condition
    "kp_no_avg": {"cello": 0.152, "trombone": 0.490},  # + DLT
    "full": {"cello": 0.117, "trombone": 0.392},
}
TABLE_I_ROWS = (("no_cvg", "(a) w/o CVG"), ("no_khp", "(b) w/o KHP"), ("no_stu", "(c) w/o STU"),
                ("no_gcn", "(d) w/o GCN"), ("no_gru", "(e) w/o CNN-GRU"), ("full", "Ours"))
TABLE_II_ROWS = (("kp_baseline", "Baseline"), ("kp_no_dlt", "+ avg. condition"), ("kp_no_avg", "+ DLT"),
                 ("full", "Ours"))
TABLE_I_VARIANTS = tuple(v for v, _ in TABLE_I_ROWS)
TABLE_II_VARIANTS = ("kp_baseline", "kp_no_dlt", "kp_no_avg")


def variant_config(preset_name: str, instrument: str, variant: str) -> Any:
    from letsplay.models.presets import ablate, preset

    cfg = preset(preset_name, instrument=instrument)
    if variant == "full":
        return cfg
    if variant == "kp_baseline":
        return dataclasses.replace(ablate(ablate(cfg, "kp_no_avg"), "kp_no_dlt"), preset=f"{preset_name}+kp_baseline")
    return ablate(cfg, variant)


def run_ablations(datas: list[str], preset_name: str, train_cfg: Any, out: str | Path,
                  variants: list[str] | None = None, split: str = "test", max_seconds: float | None = None,
                  device: str | None = None) -> dict[str, Any]:
    """Train and evaluate the Table I variants (whole recipe) and the Table II variants
    (the KP stage alone, with the same KP step budget as the full model's) for each
    dataset's instrument; write ``ablation.json`` and ``ablation.md`` into ``out``."""
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.train import schedule, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    res_path = out / "ablation.json"
    if res_path.is_file():  # finished variants of an earlier, interrupted run are kept
        results = json.loads(res_path.read_text()).get("results", {})
    kp_steps = next((e - s for name, s, e in schedule(train_cfg) if name == "kp"), train_cfg.steps)
    for data in datas:
        instrument = open_sources(data, split="train")[0].instrument
        clips = held_out_clips(data, split, instrument)
        for v in variants or (*TABLE_I_VARIANTS, *TABLE_II_VARIANTS):
            if v in results.get(instrument, {}):
                continue
            kp_only = v in TABLE_II_VARIANTS
            tc = dataclasses.replace(train_cfg, stage="kp", steps=kp_steps) if kp_only else train_cfg
            run_dir = out / instrument / v
            log.info("ablation %s / %s: training %d steps", instrument, v, tc.steps)
            tr = train(variant_config(preset_name, instrument, v), tc, data, run_dir, resume=True, device=device,
                       progress=False)
            model = Performer.load(tr.performer_path)
            ev = evaluate(model, clips, max_seconds, device or "cpu", kp_only=kp_only, progress=False)
            rec = ev.to_dict()
            rec.pop("per_clip")
            rec.update(train_steps=tr.step, train_wall_s=tr.wall_s)
            results.setdefault(instrument, {})[v] = rec
            res_path.write_text(json.dumps({"preset": preset_name, "train": train_cfg.to_dict(),
                                            "results": results}, indent=1, default=_nan_none))
    md = ablation_markdown(results, preset_name, train_cfg.steps)
    (out / "ablation.md").write_text(md)
    return {"results": results, "markdown": md}


def _nan_none(x: Any) -> Any:
    return None


def _f(x: Any, nd: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def ablation_markdown(results: dict[str, dict[str, dict[str, Any]]], preset_name: str, steps: int) -> str:
    insts = [i for i in ("cello", "trombone") if i in results]
    lines = [f"**Table I** (ours: preset `{preset_name}`, {steps} steps, held-out pieces; paper: Sub-URMP)", "",
             "| variant | " + " | ".join(f"{i} PSNR ours / paper | {i} SSIM ours / paper" for i in insts) + " |",
             "| --- |" + " --- | --- |" * len(insts)]
    for v, label in TABLE_I_ROWS:
        cells = []
        for i in insts:
            r = results[i].get(v, {})
            p = PAPER_TABLE_I[v][i]
            cells += [f"{_f(r.get('psnr'), 2)} / {p[0]:.2f}", f"{_f(r.get('ssim'), 3)} / {p[1]:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "**Table II** mean keypoint distance (normalised coordinates; lower is better)", "",
              "| variant | " + " | ".join(f"{i} ours / paper" for i in insts) + " |",
              "| --- |" + " --- |" * len(insts)]
    for v, label in TABLE_II_ROWS:
        cells = []
        for i in insts:
            r = results[i].get(v, {})
            cells.append(f"{_f(r.get('kp_dist'), 4)} / {PAPER_TABLE_II[v][i]:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
