"""What limits a performer's frames end to end: the same generator fed keypoints in which
one thing KHP must hear is replaced by the truth.

End to end, a performer draws the keypoints its KHP hears; fed the real keypoints
(renderer only), its frames are far better. This module splits that gap. Every row below
is the performer's own generator (:func:`letsplay.models.evaluate.renderer_only_step`, from
a fresh state per clip) fed one set of keypoints, scored on the same frames:

* ``model`` -- KHP's keypoints from the audio (what ``render`` shows; equal to
  ``letsplay eval``'s end-to-end row);
* ``real_onsets`` -- KHP with the real note onsets driving its motion states (the cello's
  bow reverses on every real onset and on no other frame);
* ``real_motion_states`` -- KHP with the real onsets and every motion state it reads the
  arm from set to the real one (bow direction and travel, string and stop; the slide and
  the loudness): what is left is the readout from the states;
* ``real_idle_motion`` -- KHP's keypoints plus the performer's real **idle motion**: the
  synthetic performer's slow sway and nod follow the clock from the clip's first frame,
  not the music (:mod:`letsplay.models.data.performer_motion`), so no audio carries them;
* ``audio_ceiling`` -- the real keypoints with the idle motion held at its clip mean: the
  best any performer that moves only with what it hears could draw;
* ``renderer_only`` -- the real keypoints.

and the ``still_picture`` (each clip's per-pixel median). Keypoint errors are the mean
distance over the confident points, relative to the still pose's (each clip's mean).

The idle motion needs the clip's synthetic performer (its identity seed and notes): a
clip without them (a prepared video) is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from letsplay.models.data.performer_motion import Body, perform
from letsplay.models.evaluate import (
    _as_note,
    _cache_dir,
    _kp_error,
    _mean_pose,
    _to_uint8,
    psnr,
    renderer_only_step,
    still_picture,
    write_strip,
)
from letsplay.models.keypoints import DECODED
from letsplay.models.performer import Performer
from letsplay.models.spec import VideoSpec

log = logging.getLogger(__name__)

ROWS = ("model", "real_onsets", "real_motion_states", "real_idle_motion", "audio_ceiling", "renderer_only",
        "still_picture")


def idle_motion(clip: Any, n_frames: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """``[n_frames, 67, 2]``: the clip's real keypoints less the same performance without its
    idle motion (normalised coordinates, as the keypoints; ``size``: (height, width) the
    frames are centre-cropped to for a model, as its dataset does). Needs a synthetic clip:
    its identity seed and notes rebuild the performer exactly."""
    meta = getattr(clip, "meta", {})
    if "identity_seed" not in meta or not hasattr(clip, "notes"):
        raise ValueError(f"clip {getattr(clip, 'id', '?')}: the idle motion is known only for synthetic clips "
                         "(an identity seed and notes); use a set made by `letsplay data synth`")
    vs = meta.get("video_spec", {})
    video = VideoSpec(fps=float(vs.get("fps", clip.fps)), height=int(vs.get("height", 256)),
                      width=int(vs.get("width", 256)))
    notes = [_as_note(n) for n in clip.notes()]
    body = Body.from_seed(int(meta["identity_seed"]), clip.instrument)
    total = int(clip.n_frames)
    with_idle = perform(notes, body, total, video).keypoints[:n_frames]
    without = perform(notes, body, total, video, idle=False).keypoints[:n_frames]
    real, _ = clip.keypoints()
    if np.abs(with_idle - real[:n_frames]).max() > 1e-4:
        raise ValueError(f"clip {clip.id}: its performer, rebuilt from its seed and notes, does not move as its "
                         "keypoints do (made by another version of the renderer?); remake the set")
    idle = with_idle - without
    h, w = video.height, video.width
    if size is not None and tuple(size) != (h, w):  # the crop's scale (a difference has no offset)
        from letsplay.models.data.torch_dataset import _crop_box

        _, _, cw, ch = _crop_box(h, w, *size)
        idle = idle * np.array([w / cw, h / ch])
    return idle.astype(np.float32)


def _khp_variants(model: Performer, item: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """KHP's keypoints over one clip, as heard and with the truth driving its motion states."""
    khp = model.khp
    cqt = item["cqt"][None]
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        o, _ = khp.forward(cqt, with_heatmap=False)
        out["model"] = o.keypoints[0].float().numpy()
        if not khp.cfg.motion_heads:
            return out
        onsets = item["motion"][None, :, 0].clone()
        onsets[item["motion_mask"][None, :, 0] < 0.5] = float("nan")
        o, _ = khp.forward(cqt, with_heatmap=False, teacher=onsets)
        out["real_onsets"] = o.keypoints[0].float().numpy()
        states = torch.full_like(item["motion"][None], float("nan"))
        for c in DECODED:
            given = item["motion_mask"][None, :, c] > 0.5
            states[..., c] = torch.where(given, item["motion"][None, :, c], states[..., c])
        o, _ = khp.forward(cqt, with_heatmap=False, teacher=onsets, motion_teacher=states)
        out["real_motion_states"] = o.keypoints[0].float().numpy()
    return out


STRIP_ROWS = ("model", "real_idle_motion", "audio_ceiling", "renderer_only")
ERROR_GAIN = 4.0  # the strip's error maps: |frame - real| (0..1) times this, as grey


def _error_map(frame: Tensor, real: Tensor) -> np.ndarray:
    """[H, W, 3] uint8 grey: the largest channel error, times :data:`ERROR_GAIN`."""
    e = ((frame - real).abs().amax(0) * ERROR_GAIN).clamp(0, 1)
    return (e[..., None].expand(*e.shape, 3).numpy() * 255).round().astype(np.uint8)


def measure(model: Performer, clips: list[Any], max_seconds: float | None = 10.0, chunk: int = 30,
            progress: bool = True, strip: str | Path | None = None, strip_frames: int = 4) -> dict[str, Any]:
    """The rows of the module docstring over ``clips`` (each from its first frame, at most
    ``max_seconds``): ``{"rows": {row: {"psnr", "kp_error"}}, "per_clip": [...], ...}``.
    ``strip``: a PNG of the first clip's real frames (``strip_frames`` evenly over it) and,
    below, where the frames of :data:`STRIP_ROWS` differ from them (grey, |error| x 4)."""
    from tqdm import tqdm

    from letsplay.models.data.torch_dataset import PerformanceDataset

    if model.khp is None:
        raise ValueError("the limits are KHP's: this model has none (its generator takes no keypoints)")
    cfg = model.cfg
    model = model.eval()
    t0 = time.perf_counter()
    sums = {r: [0.0, 0.0] for r in ROWS}  # PSNR sum over frames, keypoint error sum
    still_kp = 0.0
    frames = 0
    per_clip = []
    plan = []
    for clip in clips:
        n = clip.n_frames if max_seconds is None else min(clip.n_frames, int(max_seconds * clip.fps))
        n = n // chunk * chunk
        if n < chunk:
            log.warning("clip %s is shorter than %d frames; skipped", clip.id, chunk)
            continue
        plan.append((clip, n))
    if not plan:
        raise ValueError("no clip long enough to measure; use longer clips")
    rendered = [r for r in ROWS if r != "still_picture"]
    bar = tqdm(total=sum(n for _, n in plan) * len(rendered), desc="limits", unit="frame", disable=not progress,
               dynamic_ncols=True)
    shown: dict[str, list[np.ndarray]] = {}
    for ci, (clip, n) in enumerate(plan):
        want = set(np.linspace(0, n - 1, strip_frames).round().astype(int).tolist()) if strip and ci == 0 else set()
        ds = PerformanceDataset([clip], n, cfg.audio, cfg.video, stride=n, cache_dir=_cache_dir(clip))
        ds.with_parts = False
        ds.with_motion = True
        item = ds[0]
        real = (item["frames"].float() + 1) / 2  # [T, 3, H, W]
        real_kp = item["keypoints"].numpy()
        conf = item["confidence"].numpy()
        idle = idle_motion(clip, n, (cfg.video.height, cfg.video.width))
        kps = _khp_variants(model, item)
        kps["real_idle_motion"] = kps["model"] + idle
        kps["audio_ceiling"] = real_kp - idle + idle.mean(axis=0, keepdims=True)
        kps["renderer_only"] = real_kp
        still = still_picture((real * 255).round()) / 255.0
        if want:
            shown["real"] = [_to_uint8(real[t]) for t in sorted(want)]
        rec: dict[str, Any] = {"clip": clip.id, "frames": n, "rows": {}}
        p_still = float(psnr(still[None].expand_as(real), real).sum())
        sums["still_picture"][0] += p_still
        rec["rows"]["still_picture"] = {"psnr": p_still / n}
        # distances summed over the points the data has, as `letsplay eval` sums them
        sp = _kp_error(np.broadcast_to(_mean_pose(real_kp, conf), real_kp.shape), real_kp, conf)[0]
        still_kp += sp
        for row in rendered:
            if row not in kps:
                continue
            kp = torch.from_numpy(np.ascontiguousarray(kps[row])).float()
            state = model.init_state(1, "cpu")
            total = 0.0
            with torch.inference_mode():
                for t in range(n):
                    f, state = renderer_only_step(model, item["cqt"][t:t + 1], kp[t:t + 1],
                                                  item["confidence"][t:t + 1], state)
                    g = ((f.float() + 1) / 2).clamp(0, 1)
                    total += float(psnr(g, real[t:t + 1]).sum())
                    if t in want and row in STRIP_ROWS:
                        shown.setdefault(row, []).append(_error_map(g[0], real[t]))
                    bar.update(1)
            e = _kp_error(kps[row], real_kp, conf)[0]
            sums[row][0] += total
            sums[row][1] += e
            rec["rows"][row] = {"psnr": total / n, "kp_error": e / sp if sp else None}
        frames += n
        per_clip.append(rec)
        log.info("clip %s: %s", clip.id, {k: round(v["psnr"], 2) for k, v in rec["rows"].items()})
    bar.close()
    if strip and shown:
        write_strip(strip, shown["real"], *[shown[r] for r in STRIP_ROWS if r in shown])
    rows = {}
    for row in ROWS:
        if row != "still_picture" and not any(row in c["rows"] for c in per_clip):
            continue
        rows[row] = {"psnr": sums[row][0] / frames}
        if row != "still_picture":
            rows[row]["kp_error"] = sums[row][1] / still_kp if still_kp else None
            rows[row]["psnr_over_still"] = rows[row]["psnr"] - sums["still_picture"][0] / frames
    return {"instrument": cfg.instrument, "clips": len(per_clip), "frames": frames,
            "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "per_clip": per_clip}
