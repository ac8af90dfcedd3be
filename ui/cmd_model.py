"""`letsplay model info|init|combine`: inspect Performer presets and checkpoints, write fresh
ones, put stages trained in separate runs together."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

PRESET_NAMES = ("tiny", "realtime", "paper")  # models.presets.PRESETS, without importing torch here
ABLATION_NAMES = ("no_cvg", "no_khp", "no_stu", "no_gcn", "no_gru", "kp_no_avg", "kp_no_dlt", "kp_paper",
                  "kp_no_motion", "kp_no_fingering", "kp_no_retake", "warp", "cvg_audio")
INSTRUMENT_NAMES = ("cello", "trombone")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESET_NAMES, default="realtime",
                   help="model size: tiny (32x32 frames, a few thousand parameters per stage: tests), realtime "
                        "(256x256 video at >= 30 fps on a 2-core CPU; the default), paper (the paper's 256x256 "
                        "model)")
    p.add_argument("--instrument", choices=INSTRUMENT_NAMES, default="cello",
                   help="whose mean pose KHP starts from and whose instrument points it draws (default cello)")
    p.add_argument("--ablation", choices=ABLATION_NAMES,
                   help="a paper ablation variant (Tables I/II) of the preset, or 'warp' (the coarse frame is the "
                        "performer's reference warped to the pose) / 'cvg_audio' (the paper's coarse frame from "
                        "audio) (default: none, the preset as it is)")


def _add_model(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="parameters and GFLOPs per frame of each stage",
                          description="Parameters and GFLOPs per frame of each Performer stage "
                                      "(batch 1), optionally the measured torch fps on this machine.")
    _add_model_source(info)
    info.add_argument("--checkpoint", help="a saved Performer (.safetensors) instead of a preset (default: "
                                           "--preset, untrained; --preset, --instrument and --ablation are then "
                                           "ignored)")
    info.add_argument("--measure", action="store_true", help="also time the torch per-frame step (batch 1; "
                                                             "default: costs only)")
    info.add_argument("--frames", type=int, default=60, help="frames to time with --measure (default 60)")
    info.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    info.add_argument("--device", default="cpu", help="torch device for --measure: cpu, cuda (default cpu)")
    info.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    info.set_defaults(_model_run=_run_info)
    init = sub.add_parser("init", help="write a randomly initialised checkpoint of a preset",
                          description="Write an untrained Performer checkpoint (for export and "
                                      "engine tests, or as a training start).")
    _add_model_source(init)
    init.add_argument("out", help="output .safetensors path (its folder is made; an existing file is replaced)")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    init.add_argument("--weights-from", metavar="CHECKPOINT",
                      help="start from a trained performer: its audio / video specs and instrument, and every "
                           "tensor whose name and shape fit (weights, mean pose, reference); what the preset adds "
                           "(e.g. the cellist's pitch detector) starts fresh (default: all fresh)")
    init.add_argument("--lookahead", type=float, metavar="MS",
                      help="ms of future audio the performer hears (default: the preset's, or with --weights-from "
                           "the trained performer's; with --weights-from another value keeps its weights as they "
                           "are, a start for fine-tuning at that lookahead, e.g. to measure sync against it)")
    init.set_defaults(_model_run=_run_init)
    comb = sub.add_parser("combine", help="put stages trained in separate runs into one checkpoint",
                          description="Copy the weights of the named stages from other checkpoints of the "
                                      "same config into BASE, e.g. KHP from a kp run and CVG from a cvg run "
                                      "trained in parallel, before training the STU stage with --init.")
    comb.add_argument("base", help="the checkpoint whose other stages are kept")
    comb.add_argument("--stage", action="append", required=True, metavar="STAGE=PATH",
                      help="a stage (khp, cvg, stu) and the checkpoint to take it from; repeat for several")
    comb.add_argument("--out", required=True, help="output .safetensors path")
    comb.add_argument("--fp16", action="store_true",
                      help="store the weights as float16: half the file, loaded back into float32 (how the shipped "
                           "performers are stored; default float32)")
    comb.set_defaults(_model_run=_run_combine)


def _run_model(args: argparse.Namespace) -> int:
    return int(args._model_run(args))


def _build(args: argparse.Namespace) -> Any:
    from letsplay.models.performer import Performer
    from letsplay.models.presets import ablate, preset

    if getattr(args, "checkpoint", None):
        return Performer.load(args.checkpoint)
    cfg = preset(args.preset, instrument=args.instrument)
    if args.ablation:
        cfg = ablate(cfg, args.ablation)
    return Performer(_with_lookahead(cfg, getattr(args, "lookahead", None)))


def _run_info(args: argparse.Namespace) -> int:
    import torch

    from letsplay.models.cost import measure_step, stage_costs

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads} (leave it out for torch's choice)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    model = _build(args).eval()
    cfg = model.cfg
    costs = stage_costs(model)
    timing = None
    if args.measure:
        model = model.to(args.device)
        timing = measure_step(model, frames=args.frames, warmup=min(10, args.frames))
    if args.json:
        print(json.dumps({
            "preset": cfg.preset, "instrument": cfg.instrument,
            "video": cfg.video.to_dict(), "work_size": list(cfg.work_size),
            "stages": [{"name": c.name, "params": c.params, "gflops": c.flops / 1e9} for c in costs],
            "fps": timing.fps if timing else None,
            "step_ms": {"median": timing.median_ms, "mean": timing.mean_ms, "p95": timing.p95_ms} if timing else None,
            "device": args.device if timing else None,
            "threads": torch.get_num_threads(),
        }, indent=2))
        return 0
    v = cfg.video
    print(f"preset {cfg.preset} ({cfg.instrument}): video {v.width}x{v.height} @ {v.fps:g} fps, "
          f"STU at {cfg.work_size[1]}x{cfg.work_size[0]}, heatmap '{cfg.khp.heatmap}'")
    print(f"{'stage':8s} {'params':>10s} {'GFLOP/frame':>12s}")
    for c in costs:
        print(f"{c.name:8s} {c.params / 1e6:9.3f}M {c.flops / 1e9:12.3f}")
    if timing is not None:
        print(f"torch {args.device} step, batch 1, {torch.get_num_threads()} threads, {timing.frames} frames: "
              f"{timing.fps:.1f} fps (median {timing.median_ms:.1f} ms, mean {timing.mean_ms:.1f} ms, "
              f"p95 {timing.p95_ms:.1f} ms per frame)")
    return 0


def _with_lookahead(cfg: Any, ms: float | None) -> Any:
    if ms is None:
        return cfg
    from letsplay.ui.cmd_run import check_lookahead

    check_lookahead(ms)
    return dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, lookahead_ms=float(ms)))


def _run_init(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(args.seed)
    if args.weights_from:
        from letsplay.models.performer import Performer, adopt_weights
        from letsplay.models.presets import ablate, preset

        src = Performer.load(args.weights_from)
        cfg = preset(args.preset, instrument=src.cfg.instrument, audio=src.cfg.audio,
                     video=_with_lookahead(src.cfg, args.lookahead).video)
        model = Performer(ablate(cfg, args.ablation) if args.ablation else cfg)
        got = adopt_weights(model, src)
        model.save(args.out)
        fresh = sorted({".".join(k.split(".")[:2]) for k in got["fresh"] + got["reshaped"]})
        print(f"wrote {args.out}: {len(got['taken'])} tensors from {args.weights_from}, "
              f"{len(got['fresh']) + len(got['reshaped'])} fresh" + (f" ({', '.join(fresh)})" if fresh else ""))
        return 0
    model = _build(args)
    model.save(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote untrained {model.cfg.preset} performer ({n / 1e6:.2f}M parameters) to {args.out}")
    return 0


def _run_combine(args: argparse.Namespace) -> int:
    import torch

    from letsplay.models.performer import Performer, combine_stages

    stages, paths = {}, {}
    for spec in args.stage:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--stage wants STAGE=PATH (e.g. cvg=runs/cvg/performer.safetensors), got {spec!r}")
        stages[name], paths[name] = Performer.load(path), path
    model = combine_stages(Performer.load(args.base), stages)
    model.save(args.out, dtype=torch.float16 if args.fp16 else None)
    taken = ", ".join(f"{k} from {v}" for k, v in paths.items())
    print(f"wrote {args.out}: {taken}, the rest from {args.base}")
    return 0


COMMANDS = [
    ("model", "inspect Performer presets/checkpoints (info), write an untrained one (init), combine stages",
     _add_model, _run_model),
]
