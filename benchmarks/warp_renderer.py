"""What the layered warp draws from the real keypoints, beside the trivial pictures.

    python -m benchmarks.warp_renderer --data data/cello30 \\
        --json benchmarks/results/warp_renderer_cello.json --strip docs/img/warp_cello.png

The reference (the performer at rest, the room, the parts; :mod:`letsplay.models.warp`)
is taken from one *training* clip; every held-out clip (``--split``, default ``test``) is
then drawn from its own real keypoints, with no learning. Every ``--stride``-th frame is
scored, the same frames for every row:

* ``warp`` -- the layered warp of the reference to the frame's real pose;
* ``still_picture`` -- the held-out clip's own per-pixel median (the trivial answer);
* ``reference`` -- the reference frame itself, shown for every frame (the performer at rest);
* ``plate`` -- the room alone.

PSNR and SSIM are means over frames, PSNR over moving pixels (where the real frame differs
from its clip's still picture by more than 0.05) is pooled per clip and averaged over
clips: as ``letsplay eval`` computes them, with its functions.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from letsplay.models.evaluate import _psnr_of_mse, held_out_clips, moving_mask, psnr, ssim, still_picture, write_strip
from letsplay.models.warp import reference_from_clip

from .common import machine, markdown_table, progress_bar, write_json

ROWS = ("warp", "still_picture", "reference", "plate")


def _acc() -> dict[str, Any]:
    return {"psnr": 0.0, "ssim": 0.0, "frames": 0, "moving": []}


def measure(data: str, instrument: str | None = None, split: str = "test", stride: int = 5,
            max_clips: int | None = None, strip: str | None = None, progress: bool = True) -> dict:
    from letsplay.models.data.torch_dataset import open_sources

    train = open_sources(data, split="train", instrument=instrument)
    if not train:
        raise SystemExit(f"{data}: no training clips{'' if instrument is None else ' of ' + instrument}")
    instrument = train[0].instrument
    t0 = time.perf_counter()
    ref = reference_from_clip(train[0])
    build_s = time.perf_counter() - t0
    warp = ref.warp()
    clips = held_out_clips(data, split, instrument)[:max_clips]
    acc = {r: _acc() for r in ROWS}
    shown_real: list[np.ndarray] = []
    shown_fake: list[np.ndarray] = []
    ref_img = torch.from_numpy(ref.rgb).permute(2, 0, 1).float() / 255
    plate = torch.from_numpy(ref.plate).permute(2, 0, 1).float() / 255
    warp_s, warped = 0.0, 0
    bar = progress_bar(len(clips), "clips", "clip", progress)
    for clip in clips:
        kp, _ = clip.keypoints()
        real_all = torch.from_numpy(clip.frames(0, clip.n_frames)).permute(0, 3, 1, 2).float() / 255
        still = still_picture(real_all)
        idx = list(range(0, clip.n_frames, stride))
        real = real_all[idx]
        moving = moving_mask(real, still)
        t1 = time.perf_counter()
        with torch.no_grad():
            pose = torch.from_numpy(kp[idx]).float()
            fake = torch.cat([warp(pose[k:k + 8])[0] for k in range(0, len(idx), 8)])
        warp_s += time.perf_counter() - t1
        warped += len(idx)
        pictures = {"warp": fake, "still_picture": still[None].expand_as(real),
                    "reference": ref_img[None].expand_as(real), "plate": plate[None].expand_as(real)}
        m = moving[:, None].expand_as(real)
        for name, pic in pictures.items():
            a = acc[name]
            a["psnr"] += float(psnr(pic, real).sum())
            a["ssim"] += float(ssim(pic, real).sum())
            a["frames"] += len(idx)
            if m.any():
                a["moving"].append(_psnr_of_mse(float((pic - real).pow(2)[m].mean())))
        if strip is not None and len(shown_real) < 6:
            j = len(idx) // 2
            shown_real.append((real[j].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            shown_fake.append((fake[j].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        bar.update(1)
    bar.close()
    if strip is not None and shown_real:
        write_strip(strip, shown_real, shown_fake)

    rows = {name: {"psnr": a["psnr"] / max(a["frames"], 1), "ssim": a["ssim"] / max(a["frames"], 1),
                   "psnr_moving": float(np.mean(a["moving"])) if a["moving"] else None} for name, a in acc.items()}
    return {"instrument": instrument, "data": str(data), "split": split, "clips": len(clips),
            "frames_scored": int(acc["warp"]["frames"]), "stride": stride, "reference": ref.source,
            "sway_gain": ref.sway_gain, "reference_build_s": round(build_s, 1),
            "warp_ms_per_frame": round(1000 * warp_s / max(warped, 1), 2),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a synthetic dataset (format 2: part maps, instrument points)")
    ap.add_argument("--instrument", default=None, help="the dataset's instrument (default: its only one)")
    ap.add_argument("--split", default="test", help="the held-out clips to draw (default: test)")
    ap.add_argument("--stride", type=int, default=5, help="score every N-th frame (default: 5)")
    ap.add_argument("--clips", type=int, default=None, help="at most this many held-out clips (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--strip", default=None, help="a PNG: real frames on top, the warp below")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    if args.stride < 1:
        ap.error(f"--stride must be >= 1, got {args.stride}")
    torch.set_num_threads(args.threads)
    r = {"benchmark": "warp_renderer", "machine": machine(),
         **measure(args.data, args.instrument, args.split, args.stride, args.clips, args.strip)}
    write_json(r, args.json)
    print(markdown_table(["picture", "PSNR dB", "SSIM", "moving PSNR dB"],
                         [[name, v["psnr"], v["ssim"], v["psnr_moving"]] for name, v in r["rows"].items()]),
          file=sys.stdout)
    print(f"{r['instrument']}: {r['clips']} clips, {r['frames_scored']} frames; reference {r['reference']}, "
          f"warp {r['warp_ms_per_frame']} ms/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
