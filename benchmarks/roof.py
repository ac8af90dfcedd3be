"""The limit ("roof"): this machine's matrix-multiply throughput and the fps it allows.

    python -m benchmarks.roof [--n 2048] [--repeats 7] [--threads N] [--preset realtime] [--json out.json]

A frame of the Performer is almost all convolutions and matrix products, so the fastest
any backend could go on this machine is about ``GEMM FLOP/s / FLOPs per frame``. The
GEMM rate is measured here (torch fp32 ``n x n @ n x n``, median of several, with the
threads in use); the FLOPs per frame are ``models/cost.py`` ``stage_costs`` (KHP,
CVG, STU: 2 per multiply-add of convolutions and matrix products) plus the streaming
CQT's matrix products for one frame's new audio. Every fps figure of ``fps.py`` and
``scaling.py`` is also given as a fraction of this roof. Elementwise work, memory
traffic and per-call overheads are not in the count, so real fractions are well below 1
for small models; a fraction a little above 1 means the model's convolutions ran at a
better rate than a square GEMM did when it was measured (a loaded machine).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Any

import torch

log = logging.getLogger(__name__)


def gemm_gflops(device: str = "cpu", dtype: str = "fp32", n: int = 2048, repeats: int = 7,
                warmup: int = 2) -> dict[str, Any]:
    """Median GFLOP/s of an ``n x n`` matrix product (2 n^3 FLOPs) on ``device``."""
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    flops = 2.0 * n ** 3
    rates = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            dt_s = time.perf_counter() - t0
            if i >= warmup:
                rates.append(flops / dt_s / 1e9)
    return {
        "device": device if dev.type == "cpu" else f"{device} ({torch.cuda.get_device_name(dev)})",
        "dtype": dtype,
        "n": n,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "gflops": statistics.median(rates),
        "gflops_max": max(rates),
        "samples": [round(r, 2) for r in rates],
    }


def cqt_flops_per_frame(audio, video, frames: int = 30) -> float:
    """FLOPs of the streaming CQT's matrix products for one frame's new audio (mean)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .common import streaming_cqt

    cqt = streaming_cqt(audio)
    per = audio.sample_rate / video.fps
    x = torch.randn(1, int(per * (frames + 1)) + cqt.cqt.context) * 0.1
    state = cqt.init_state(1)
    with torch.inference_mode():
        _, state = cqt.step(x[:, : cqt.cqt.context], state)  # past the start
        with FlopCounterMode(display=False) as fc:
            pos = cqt.cqt.context
            for i in range(frames):
                end = cqt.cqt.context + int((i + 1) * per)
                _, state = cqt.step(x[:, pos:end], state)
                pos = end
    return fc.get_total_flops() / frames


def frame_flops(performer) -> dict[str, float]:
    """FLOPs of one frame at batch 1: each stage, the CQT, and the total."""
    from letsplay.models.cost import stage_costs

    out = {c.name: float(c.flops) for c in stage_costs(performer) if c.name != "total"}
    out["cqt"] = cqt_flops_per_frame(performer.cfg.audio, performer.cfg.video)
    out["total"] = sum(out.values())
    return out


def roof(flops: dict[str, float], gflops: float) -> dict[str, float]:
    """The fps and per-stage milliseconds a GEMM rate of ``gflops`` allows (batch 1)."""
    rate = gflops * 1e9
    out = {"fps": rate / flops["total"], "ms_per_frame": flops["total"] / rate * 1000}
    out.update({f"{k}_ms": v / rate * 1000 for k, v in flops.items() if k != "total"})
    return out


def fraction(fps: float, roof_fps: float) -> float:
    """Measured fps (all streams' frames) as a fraction of the roof's fps."""
    return fps / roof_fps


def main(argv: list[str] | None = None) -> int:
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset as make_preset

    from .common import machine, markdown_table, set_threads, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="matrix size (default 2048)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", nargs="+", default=["tiny", "realtime"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    g = gemm_gflops(args.device, n=args.n, repeats=args.repeats)
    rows, per = [], {}
    for name in args.preset:
        fl = frame_flops(Performer(make_preset(name)).eval())
        r = roof(fl, g["gflops"])
        per[name] = {"flops_per_frame": fl, "roof": r}
        rows.append([name, fl["total"] / 1e9, r["ms_per_frame"], r["fps"]])
    write_json({"benchmark": "roof", "machine": machine(), "gemm": g, "presets": per}, args.json)
    print(f"GEMM {args.n}x{args.n} fp32 on {g['device']}, {g['threads']} threads: {g['gflops']:.1f} GFLOP/s (median)")
    print(markdown_table(["preset", "GFLOP/frame", "roof ms/frame", "roof fps"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
