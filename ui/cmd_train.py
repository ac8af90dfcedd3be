"""`letsplay train|eval|ablate`: stage-wise training, held-out evaluation, the paper's ablations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PRESET_NAMES = ("tiny", "realtime", "paper")
INSTRUMENT_NAMES = ("cello", "trombone")
STAGE_NAMES = ("kp", "cvg", "stu", "all", "e2e")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, required=True, help="optimizer steps in total")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=8, help="frames per sequence (default 8)")
    p.add_argument("--fractions", type=float, nargs=3, metavar=("KP", "CVG", "STU"), default=(0.2, 0.3, 0.5),
                   help="shares of --steps for the kp, cvg and stu stages with --stage all (default 0.2 0.3 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints (default 200)")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric lines (default 10)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--vgg-weights", help="local ImageNet VGG-19 weights for the perceptual loss")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--teacher-keypoints", type=float, default=0.0, metavar="SHARE",
                   help="stu stage: share of sequences drawn from the real keypoints' heatmaps instead of KHP's "
                        "(0..1, default 0: the paper's recipe)")
    p.add_argument("--no-kp-lanes", action="store_true",
                   help="kp stage: random windows from a fresh state instead of clips read start to end")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (letsplay format or Sub-URMP tree)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="realtime")
    p.add_argument("--instrument", choices=INSTRUMENT_NAMES, default="cello")
    p.add_argument("--ablation", help="a paper ablation variant (Tables I/II), e.g. no_gcn")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, performer.safetensors")
    p.add_argument("--stage", choices=STAGE_NAMES, default="all", help="what to train (default all: kp, cvg, stu)")
    p.add_argument("--init", help="start from this Performer checkpoint (e.g. e2e fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    _add_common(p)


def _train_config(args: argparse.Namespace, stage: str):  # noqa: ANN202 - lazy torch import
    from letsplay.models.train import TrainConfig

    return TrainConfig(stage=stage, steps=args.steps, batch=args.batch, seq_len=args.seq_len,
                       stage_fractions=tuple(args.fractions), seed=args.seed, ckpt_every=args.ckpt_every,
                       log_every=args.log_every, workers=args.workers, amp=not args.no_amp,
                       vgg_weights=args.vgg_weights, teacher_keypoints=args.teacher_keypoints,
                       kp_lanes=not args.no_kp_lanes)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _run_train(args: argparse.Namespace) -> int:
    from letsplay.models.presets import ablate, preset
    from letsplay.models.train import train

    _threads(args)
    cfg = preset(args.preset, instrument=args.instrument)
    if args.ablation:
        cfg = ablate(cfg, args.ablation)
    res = train(cfg, _train_config(args, args.stage), args.data, args.out, resume=args.resume,
                device=args.device, init_from=args.init)
    print(f"trained {res.step} steps ({res.steps_per_s:.2f} steps/s, {res.wall_s:.0f} s): {res.performer_path}")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a Performer .safetensors")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="held-out split (default test)")
    p.add_argument("--max-seconds", type=float, help="evaluate at most this many seconds per clip")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--strip", help="write a PNG strip of generated vs ground-truth frames here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _run_eval(args: argparse.Namespace) -> int:
    from letsplay.models.evaluate import evaluate_checkpoint

    _threads(args)
    res = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, max_seconds=args.max_seconds,
                              device=args.device, strip=args.strip)
    d = res.to_dict()
    text = json.dumps(d, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def _add_ablate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, nargs="+", help="dataset folder(s): one per instrument")
    p.add_argument("--preset", choices=PRESET_NAMES, default="tiny")
    p.add_argument("--out", required=True, help="folder for the runs, ablation.json and ablation.md")
    p.add_argument("--variants", nargs="+", help="only these (default: full + every ablation)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-seconds", type=float, help="evaluate at most this many seconds per clip")
    _add_common(p)


def _run_ablate(args: argparse.Namespace) -> int:
    from letsplay.models.evaluate import run_ablations

    _threads(args)
    tables = run_ablations(args.data, args.preset, _train_config(args, "all"), args.out, variants=args.variants,
                           split=args.split, max_seconds=args.max_seconds, device=args.device)
    print(tables["markdown"])
    return 0


COMMANDS = [
    ("train", "train a Performer stage by stage (KP, CVG, STU; optional end-to-end)", _add_train, _run_train),
    ("eval", "evaluate a Performer on held-out pieces: PSNR, SSIM, keypoints, temporal, sync", _add_eval, _run_eval),
    ("ablate", "train and evaluate the paper's Table I / II variants; write both tables", _add_ablate, _run_ablate),
]
