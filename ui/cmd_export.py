"""`letsplay export onnx|trt`: a checkpoint's ONNX graphs and manifest (the fused step, the
stages, the pipelined front/back pair, the CQT step), optional int8 / fp16 variants for CPU
onnxruntime, and TensorRT engines on a GPU; checked against torch before it says "wrote"."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from letsplay.ui.cmd_run import _check_settings


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=["onnx", "trt"],
                   help="onnx: the ONNX graphs and their manifest; trt: those plus a TensorRT engine (GPU)")
    p.add_argument("--checkpoint", required=True,
                   help="a Performer checkpoint (.safetensors) or a shipped name (cello, trombone); required")
    p.add_argument("--out", required=True,
                   help="output folder, new or empty (required); an earlier export there is replaced only with "
                        "--overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out, or write into a folder holding other files (files "
                        "of the same names are replaced, the others kept) (default: refuse)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16",
                   help="TensorRT engine precision (trt only; default fp16)")
    p.add_argument("--no-stages", action="store_true",
                   help="leave out the per-stage graphs (khp, cvg, stu .onnx: for inspecting or benchmarking "
                        "one stage); the fused performer graph, the front/back pair of the pipelined step and "
                        "the CQT step (causal audio) are always written (default: all graphs)")
    q = p.add_argument_group("reduced-precision variants of performer.onnx for CPU onnxruntime "
                             "(run one with --precision int8|fp16)")
    q.add_argument("--int8", action="store_true",
                   help="static int8 (QDQ) quantization, calibrated on the demo music stepped through the fp32 graph "
                        "(default: not made)")
    q.add_argument("--fp16", action="store_true",
                   help="float16 weights and activations, float32 I/O (default: not made)")
    q.add_argument("--calib-frames", type=int, default=300, metavar="N", help="int8 calibration frames (default 300)")
    q.add_argument("--eval-frames", type=int, default=300, metavar="N",
                   help="frames the variants are measured on against fp32, free-running (default 300)")
    q.add_argument("--min-psnr", type=float, default=30.0, metavar="DB",
                   help="record a variant only if its frames are at least this close to fp32 (default 30 dB; 0: any)")
    q.add_argument("--threads", type=int, default=None, metavar="N",
                   help="onnxruntime threads while measuring the variants, at least 1 (default: onnxruntime's)")


def _check_export_folder(out: Path, overwrite: bool) -> bool:
    """--out: a new or empty folder, or (with --overwrite) an earlier export or any folder.
    Returns True when an earlier export is there (to be replaced)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a new folder name")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return False
    previous = (out / "manifest.json").is_file()
    if overwrite:
        return previous
    if previous:
        raise ValueError(f"--out {out} holds an earlier letsplay export; pass --overwrite to replace it, or give "
                         f"a new folder")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise ValueError(f"--out {out} is not empty ({len(entries)} entries: {shown}) and is not a letsplay export; "
                     f"give a new or empty folder, or pass --overwrite to write into it anyway")


def _remove_previous_export(out: Path) -> None:
    """--overwrite: drop the earlier export's manifest first (a failed export then cannot
    pass for the old one) and the graph files it lists; other files stay."""
    try:
        data = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        data = {}
    (out / "manifest.json").unlink(missing_ok=True)
    files = set()
    for group in ("graphs", "variants"):
        for entry in (data.get(group) or {}).values():
            f = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(f, str) and f == Path(f).name:
                files.add(f)
    for f in files:
        (out / f).unlink(missing_ok=True)


def _run_export(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from letsplay.export.onnx import export_onnx, parity, sha256_file
    from letsplay.models.performer import Performer
    from letsplay.realtime.performers import resolve_performer

    _check_settings(args)
    ref = resolve_performer(args.checkpoint)
    if ref.kind != "checkpoint":
        raise ValueError(f"{args.checkpoint} is already an exported folder; give the checkpoint")
    if args.target == "trt":
        from letsplay.export.tensorrt import import_tensorrt

        import_tensorrt()  # no TensorRT / no GPU: one clear line now, not after the ONNX export
    if (args.int8 or args.fp16) and min(args.calib_frames, args.eval_frames) < 1:
        raise ValueError("--calib-frames and --eval-frames must be at least 1")
    out = Path(args.out).expanduser()
    previous = _check_export_folder(out, args.overwrite)
    model = Performer.load(ref.path)
    if previous:
        _remove_previous_export(out)
    # What export_onnx writes: the fused step, the stages (unless --no-stages), the front/back pair,
    # and the CQT step for causal audio.
    stages = 0 if args.no_stages else sum(getattr(model, n, None) is not None for n in ("khp", "cvg", "warp", "stu"))
    bar = tqdm(total=1 + stages + 2 + (model.cfg.audio.alignment == "causal"), unit="graph", desc="export")
    export_onnx(model, args.out, checkpoint_sha256=sha256_file(ref.path), stages=not args.no_stages,
                progress=lambda name: (bar.set_postfix_str(name), bar.update(1)))
    bar.close()
    # Parity report: 100 frames of random windows, state fed back from the torch trajectory.
    rng = np.random.default_rng(0)
    worst = parity(model, args.out, rng.random((100, model.cfg.audio.n_bins, model.cfg.audio.window_columns),
                                               dtype=np.float32))
    print(f"exported {ref.name} to {args.out}; parity torch vs onnxruntime over 100 frames (max abs diff):")
    for k, v in worst.items():
        print(f"  {k:28s} {v:.2e}")
    rc = 0
    if args.int8 or args.fp16:
        rc = _export_variants(args, model)
    if args.target == "trt":
        from letsplay.export.onnx import read_manifest
        from letsplay.export.tensorrt import build_engine, engine_graph

        graph, typed = engine_graph(read_manifest(args.out), args.precision)  # TensorRT 11 fp16: the fp16 variant
        plan = build_engine(graph, Path(args.out) / "trt", args.precision, strongly_typed=typed)
        print(f"TensorRT engine: {plan}")
    return rc


def _export_variants(args: argparse.Namespace, model) -> int:
    """--int8 / --fp16: make, measure and record the variants; print the report. Exit
    status 1 when a variant was refused for its quality."""
    from tqdm import tqdm

    from letsplay.export.quantize import add_variants
    from letsplay.models.features import windows_from_audio
    from letsplay.realtime.demo import demo_audio

    cfg = model.cfg
    n_calib = args.calib_frames if args.int8 else 0
    need = n_calib + args.eval_frames
    x = demo_audio(cfg.instrument, cfg.audio.sample_rate)
    windows = windows_from_audio(x[: int((need / cfg.video.fps + 1.0) * cfg.audio.sample_rate)], cfg.audio,
                                 cfg.video, need)
    calib = windows[:n_calib]
    rest = windows[n_calib:]
    held_out = len(rest) >= args.eval_frames
    evals = rest[: args.eval_frames] if held_out else windows[: args.eval_frames]
    precisions = [p for p, on in (("int8", args.int8), ("fp16", args.fp16)) if on]
    bar = tqdm(total=len(precisions) * 2 + args.int8, unit="step", desc="variants")
    reports = add_variants(args.out, calib, evals, precisions, min_psnr=args.min_psnr or None,
                           threads=args.threads, source=f"demo music ({cfg.instrument})",
                           progress=lambda s: (bar.set_postfix_str(s.split(":")[0]), bar.update(1)))
    bar.close()
    where = ("from the start" if not n_calib else "frames after the calibration ones" if held_out
             else "overlapping the calibration frames: the demo is shorter than both")
    print(f"variants vs fp32: {len(evals)} stepped frames of the demo music ({where}), each graph carrying its "
          f"own state; threads {args.threads or 'onnxruntime default'}")
    rc = 0
    for p, r in reports.items():
        ms = r["step_ms"]
        print(f"  {p}: PSNR {r['psnr_db']:.1f} dB (worst frame {r['psnr_min_db']:.1f}, one step from the fp32 "
              f"state {r['psnr_step_db']:.1f})", end="")
        if r["keypoints_max_abs"] is not None:
            print(f"; keypoints abs diff max {r['keypoints_max_abs']:.2e} mean {r['keypoints_mean_abs']:.2e}", end="")
        print(f"; median step {ms['variant']:.2f} ms vs fp32 {ms['fp32']:.2f} ms ({r['speedup']:.2f}x)")
        if r["speedup"] is not None and r["speedup"] < 1.0:
            print(f"    note: {p} is slower than fp32 on this machine"
                  + (" (int8 kernels pay off on CPUs with VNNI)" if p == "int8" else
                     " (CPU onnxruntime has few float16 kernels: it computes in fp32 with casts)")
                  + "; fp32 stays the faster choice here")
        if r["recorded"]:
            print(f"    wrote {Path(args.out) / r['file']} (run it: --performer {args.out} --backend onnxruntime "
                  f"--precision {p})")
        else:
            print(f"    NOT recorded: {r['psnr_db']:.1f} dB is under --min-psnr {args.min_psnr:g} dB "
                  f"(pass --min-psnr 0 to keep it anyway)", file=sys.stderr)
            rc = 1
    return rc


COMMANDS = [
    ("export", "export a checkpoint to ONNX graphs (+ TensorRT engines)", _add_export, _run_export),
]
