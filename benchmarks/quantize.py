"""Reduced-precision variants of the fused graph on CPU onnxruntime: quality and speed.

    python -m benchmarks.quantize --checkpoint models/performers/cello.safetensors \\
        --json benchmarks/results/quantize_cpu.json [--frames 300] [--calib-frames 300] [--threads 1]

Exports the checkpoint's fused graph to a scratch folder (or uses ``--out DIR``), makes
the int8 (static QDQ, calibrated on the demo music stepped through the fp32 graph) and
fp16 variants, and measures each against fp32 over ``--frames`` stepped frames of the
demo music following the calibration frames, both graphs free-running (each its own
state): frame PSNR (pooled, worst frame, one step from the fp32 state), keypoint
differences, and median step times of fp32 and the variant measured interleaved in one
run (robust to a noisy machine; absolute times are this machine's, under its load).
Nothing is refused here (no PSNR threshold): the JSON says what each variant gives.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, summary, write_json


def run(checkpoint: str, frames: int = 300, calib_frames: int = 300, threads: int | None = 1,
        precisions: tuple[str, ...] = ("int8", "fp16"), out: str | None = None) -> dict:
    import numpy as np

    from letsplay.export.onnx import export_onnx, read_manifest, sha256_file
    from letsplay.export.quantize import GraphRunner, add_variants
    from letsplay.models.features import windows_from_audio
    from letsplay.models.performer import Performer
    from letsplay.realtime.demo import demo_audio
    from letsplay.realtime.performers import resolve_performer

    ref = resolve_performer(checkpoint)
    model = Performer.load(ref.path)
    cfg = model.cfg
    with tempfile.TemporaryDirectory(prefix="letsplay-bench-quant.") as scratch:
        folder = Path(out or scratch)
        t0 = time.perf_counter()
        export_onnx(model, folder, checkpoint_sha256=sha256_file(ref.path), stages=False, cqt=False, pipeline=False)
        export_s = time.perf_counter() - t0
        need = calib_frames + frames
        x = demo_audio(cfg.instrument, cfg.audio.sample_rate)
        w = windows_from_audio(x[: int((need / cfg.video.fps + 1.0) * cfg.audio.sample_rate)], cfg.audio, cfg.video,
                               need)
        held_out = len(w) >= need
        evals = w[calib_frames:need] if held_out else w[:frames]
        reports = add_variants(folder, w[:calib_frames], evals, precisions, min_psnr=None, threads=threads,
                               source=f"demo music ({cfg.instrument})")
        man = read_manifest(folder)
        sizes = {"fp32": man.graph_path().stat().st_size,
                 **{p: man.graph_path("performer", p).stat().st_size for p in man.precisions()[1:]}}
        # A short standalone timing of each graph alone too (not interleaved: cache effects of one
        # graph on the other excluded); the interleaved medians in the reports are the comparison.
        alone = {}
        for p in man.precisions():
            g = GraphRunner(man.graph_path("performer", p), threads)
            st = g.init_state()
            times = []
            for i, win in enumerate(evals[: min(len(evals), 60)]):
                t1 = time.perf_counter()
                o = g.step(np.ascontiguousarray(win[None]), st)
                if i >= 3:
                    times.append(time.perf_counter() - t1)
                st = g.next_state(o)
            alone[p] = summary(times)
    variants = {}
    for p, r in reports.items():
        variants[p] = {k: r[k] for k in ("psnr_db", "psnr_min_db", "psnr_step_db", "keypoints_max_abs",
                                         "keypoints_mean_abs", "step_ms", "speedup", "calibration_frames",
                                         "make_s")}
        variants[p]["file_mb"] = sizes[p] / 1e6
        if "quantized_nodes" in r:
            variants[p]["quantized_nodes"] = r["quantized_nodes"]
            variants[p]["float_nodes"] = len(r["float_nodes"])
    return {
        "benchmark": "quantize",
        "machine": machine(),
        "checkpoint": str(ref.path),
        "checkpoint_sha256": sha256_file(ref.path),
        "preset": cfg.preset,
        "frame_size": [cfg.video.height, cfg.video.width],
        "threads": threads,
        "eval_frames": len(evals),
        "eval_held_out": held_out,
        "calibration_frames": calib_frames,
        "mode": "free-running: fp32 and each variant carry their own state over the same demo-music windows",
        "export_s": export_s,
        "fp32_file_mb": sizes["fp32"] / 1e6,
        "variants": variants,
        "alone_step": alone,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a Performer checkpoint or shipped name")
    ap.add_argument("--frames", type=int, default=300, help="stepped frames to measure on")
    ap.add_argument("--calib-frames", type=int, default=300, help="int8 calibration frames")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--precisions", default="int8,fp16", help="comma-separated: int8, fp16")
    ap.add_argument("--out", default=None, help="keep the export (and variants) in this folder")
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    r = run(args.checkpoint, args.frames, args.calib_frames, args.threads or None,
            tuple(p for p in args.precisions.split(",") if p), args.out)
    print(write_json(r, args.json))
    for p, v in r["variants"].items():
        kp = v["keypoints_max_abs"]
        print(f"{p}: PSNR {v['psnr_db']:.1f} dB vs fp32 (worst frame {v['psnr_min_db']:.1f}); keypoints max abs "
              f"{'-' if kp is None else f'{kp:.2e}'}; {v['step_ms']['variant']:.2f} ms vs fp32 "
              f"{v['step_ms']['fp32']:.2f} ms ({v['speedup']:.2f}x)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
