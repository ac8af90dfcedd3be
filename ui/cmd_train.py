"""`letsplay train|eval|ablate`: stage-wise training, held-out evaluation, the paper's ablations."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

from letsplay.ui.cmd_run import check_lookahead

PRESET_NAMES = ("tiny", "realtime", "paper")
INSTRUMENT_NAMES = ("cello", "trombone")
STAGE_NAMES = ("onset", "pitch", "kp", "cvg", "stu", "all", "e2e")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, required=True,
                   help="optimizer steps in total (with --stage all: split over the stages by --fractions)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (per process under torchrun; default 4)")
    p.add_argument("--seq-len", type=int, default=8, help="frames per sequence (default 8)")
    p.add_argument("--minutes", type=float, default=0.0, metavar="M",
                   help="wall-clock budget: after timing a few steps the run trains as many steps as end within "
                        "M minutes (at most --steps; the learning-rate schedule spans them). Default 0: no budget")
    p.add_argument("--fractions", type=float, nargs=3, metavar=("KP", "CVG", "STU"), default=(0.2, 0.3, 0.5),
                   help="shares of --steps for the kp, cvg and stu stages with --stage all (default 0.2 0.3 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and noise (default 0)")
    p.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints (default 200)")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric lines (default 10)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--vgg-weights", help="local ImageNet VGG-19 weights for the perceptual loss (default: a randomly "
                                         "initialised VGG-19)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--teacher-keypoints", type=float, default=0.0, metavar="SHARE",
                   help="stu stage: share of sequences drawn from the real keypoints' heatmaps instead of KHP's "
                        "(0..1, default 0: the paper's recipe)")
    p.add_argument("--teacher-motion", type=float, default=0.0, metavar="SHARE",
                   help="kp stage, motion heads: share of sequences whose keypoint readout reads the real motion "
                        "states (bow direction and travel, string, stop, slide) instead of the model's own, so it "
                        "learns what each state means rather than hedging toward the mean pose (0..1, default 0)")
    p.add_argument("--lr", type=float, help="Adam's learning rate at the start of each stage (default 1e-3, the "
                                            "paper's; a warp performer's STU corrects a near-exact frame: 2e-4)")
    p.add_argument("--lr-final", type=float, help="the learning rate at the end of each stage (default 1.25e-4)")
    p.add_argument("--adv-weight", type=float, help="weight of the STU's adversarial loss (default 0.05; 0: none)")
    p.add_argument("--disc", choices=("global", "patch"), default="global",
                   help="the audio-video discriminator: global -- the frame pooled into one logit, as in the paper; "
                        "patch -- a PatchGAN, a logit per 64-px patch conditioned on the audio by projection, "
                        "which judges the small parts (bow, hands) a pooled logit overlooks (default global)")
    p.add_argument("--fm-weight", type=float, default=0.0, metavar="W",
                   help="STU stage: feature matching, the L1 distance between the discriminator's features of the "
                        "real and the generated frame, weighted W (needs --adv-weight > 0; default 0: none)")
    p.add_argument("--thin-weight", type=float, default=0.0, metavar="W",
                   help="STU stage: the L1 loss weighs the pixels of thin parts (bow, slide, hands; from the part "
                        "maps) 1 + W times (default 0: every pixel alike)")
    p.add_argument("--stu-lanes", action="store_true",
                   help="STU stage: each of --batch lanes reads a clip from start to end in --seq-len chunks with "
                        "every state (KHP, CVG, the STU's CNN-GRU) carried, as the performer runs (default: "
                        "windows from anywhere, each from a fresh state)")
    p.add_argument("--timbre", type=float, default=0.0, metavar="S",
                   help="onset, pitch and kp stages: multiply each sequence's CQT by a random smooth EQ, spectral "
                        "tilt and gain of strength S (another instrument body, microphone or soundfont), so the "
                        "motion does not hang on one recorded sound (0..2; default 0: none; the recipe uses 0.5)")
    p.add_argument("--freeze-onset", action="store_true",
                   help="kp stage: keep the KHP's onset detector as --init has it (trained by --stage onset)")
    p.add_argument("--no-kp-lanes", action="store_true",
                   help="kp stage: random windows from a fresh state instead of clips read start to end")


PRESET_HELP = ("model size: tiny (32x32 frames, a few thousand parameters per stage: tests and smoke runs), "
               "realtime (256x256 video at >= 30 fps on a 2-core CPU; the default), "
               "paper (the paper's 256x256 model, full-width VGG prefix, 64..512-channel STU)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, nargs="+", metavar="FOLDER",
                   help="dataset folder (letsplay format or Sub-URMP tree); its 'train' split is trained on. "
                        "Several: their training clips together (e.g. the same pieces rendered with two "
                        "soundfonts, so the motion does not hang on one instrument's sound)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="realtime", help=PRESET_HELP)
    p.add_argument("--instrument", choices=INSTRUMENT_NAMES, default=None,
                   help="whose clips to train on (default: the dataset's instrument; required when the dataset "
                        "holds several)")
    p.add_argument("--ablation", help="a paper ablation variant (Tables I/II), e.g. no_gcn, no_cvg, kp_no_dlt "
                                      "(default: none, the full model)")
    p.add_argument("--out", required=True,
                   help="run folder: checkpoints/, metrics.jsonl, train_config.json, performer.safetensors; "
                        "must be new or empty unless --resume or --overwrite")
    p.add_argument("--stage", choices=STAGE_NAMES, default="all",
                   help="what to train: onset (the KHP's onset detector alone, before kp: long windows, e.g. "
                        "--seq-len 240), pitch (the cellist's pitch detector alone, before kp: it names the note "
                        "the fingering state follows, e.g. --seq-len 64), kp (keypoints, KHP; the pitch detector "
                        "stays as it is), cvg (coarse video), stu (final frames, KHP and CVG "
                        "frozen), all (kp, cvg, stu in turn, --steps split by --fractions; the default), "
                        "e2e (all stages together: end-to-end fine-tuning, usually with --init)")
    p.add_argument("--init", help="start from the weights of this Performer checkpoint (default: a fresh "
                                  "initialisation from --seed)")
    p.add_argument("--lookahead", type=float, default=None, metavar="MS",
                   help="future audio each frame sees, 0..2000 ms: the model learns to move as far ahead of the "
                        "sound (a player's hands lead the note); render and live then use it by default "
                        "(default: the preset's, 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its last checkpoint stopped (the same options "
                        "are required)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds a run: its checkpoints, performer.safetensors, "
                        "metrics and config are deleted first (other files are kept)")
    _add_common(p)


def _train_config(args: argparse.Namespace, stage: str):  # noqa: ANN202 - lazy torch import
    from letsplay.models.train import TrainConfig, stu_discriminator

    return TrainConfig(stage=stage, steps=args.steps, batch=args.batch, seq_len=args.seq_len,
                       stage_fractions=tuple(args.fractions), seed=args.seed, ckpt_every=args.ckpt_every,
                       log_every=args.log_every, workers=args.workers, amp=not args.no_amp,
                       vgg_weights=args.vgg_weights, teacher_keypoints=args.teacher_keypoints,
                       kp_lanes=not args.no_kp_lanes, stu_lanes=args.stu_lanes, minutes=args.minutes,
                       thin_weight=args.thin_weight, teacher_motion=args.teacher_motion,
                       freeze_onset=args.freeze_onset, timbre=args.timbre,
                       disc=stu_discriminator(patch=args.disc == "patch"), fm_weight=args.fm_weight,
                       **{k: v for k, v in (("lr", args.lr), ("lr_final", args.lr_final),
                                            ("adv_weight", args.adv_weight)) if v is not None})


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _check_train_args(args: argparse.Namespace) -> None:
    """Refuse invalid or contradictory options in one line, before anything is loaded."""
    for opt, value in (("--steps", args.steps), ("--batch", args.batch), ("--seq-len", args.seq_len),
                       ("--ckpt-every", args.ckpt_every), ("--log-every", args.log_every)):
        if value < 1:
            raise ValueError(f"{opt} must be >= 1, got {value}")
    if not (math.isfinite(args.thin_weight) and args.thin_weight >= 0):
        raise ValueError(f"--thin-weight is an extra loss weight, >= 0; got {args.thin_weight}")
    if not (math.isfinite(args.minutes) and args.minutes >= 0):
        raise ValueError(f"--minutes is a wall-clock budget in minutes, >= 0 (0: none); got {args.minutes}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads} (leave it out for torch's choice)")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if min(args.fractions) < 0 or sum(args.fractions) <= 0:
        raise ValueError(f"--fractions are shares of --steps: >= 0 and not all 0, got {list(args.fractions)}")
    if not 0.0 <= args.teacher_motion <= 1.0:
        raise ValueError(f"--teacher-motion is a share of the sequences, 0..1; got {args.teacher_motion}")
    if not (math.isfinite(args.fm_weight) and args.fm_weight >= 0):
        raise ValueError(f"--fm-weight is a loss weight, >= 0; got {args.fm_weight}")
    if args.fm_weight > 0 and args.adv_weight is not None and args.adv_weight <= 0:
        raise ValueError("--fm-weight reads the discriminator's features, which only the adversarial term trains: "
                         "give --adv-weight > 0 (or leave it at its default)")
    if not (math.isfinite(args.timbre) and 0.0 <= args.timbre <= 2.0):
        raise ValueError(f"--timbre is the strength of the random EQ, 0..2 (0: none); got {args.timbre}")
    if not 0.0 <= args.teacher_keypoints <= 1.0:
        raise ValueError(f"--teacher-keypoints is a share of the sequences, 0..1; got {args.teacher_keypoints}")
    check_lookahead(args.lookahead)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it over; choose one")
    if args.init is not None and not Path(args.init).is_file():
        raise ValueError(f"--init {args.init}: no such checkpoint file")


def _run_train(args: argparse.Namespace) -> int:
    from letsplay.models.presets import ablate, preset
    from letsplay.models.train import train
    from letsplay.models.train_checkpoint import check_out_folder
    from letsplay.models.train_data import resolve_instrument
    from letsplay.models.train_dist import finish_distributed

    _check_train_args(args)
    tc = _train_config(args, args.stage)
    instrument = resolve_instrument(args.data, args.instrument)
    cfg = preset(args.preset, instrument=instrument)
    if args.lookahead is not None:
        cfg = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, lookahead_ms=float(args.lookahead)))
    if args.ablation:
        cfg = ablate(cfg, args.ablation)
    if args.init and args.lookahead is not None:
        from letsplay.models.performer import Performer

        own = Performer.load(args.init).cfg.video.lookahead_ms
        if abs(own - float(args.lookahead)) > 1e-9:
            raise ValueError(f"--lookahead {args.lookahead:g} ms: the --init checkpoint hears {own:g} ms ahead, and "
                             f"training from it keeps that (drop --lookahead)")
    check_out_folder(args.out, tc, None if args.init else cfg, resume=args.resume, overwrite=args.overwrite)
    _threads(args)
    res = train(cfg, tc, args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                device=args.device, init_from=args.init)
    finish_distributed()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 reports
        return 0
    what = f"from {Path(args.init).name}" if args.init else args.preset
    print(f"trained {instrument} ({what}), {res.step} steps ({res.steps_per_s:.2f} steps/s, "
          f"{res.wall_s:.0f} s): {res.performer_path}")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a Performer .safetensors")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="held-out split (default test)")
    p.add_argument("--max-seconds", type=float, help="evaluate at most this many seconds per clip")
    p.add_argument("--json", help="write every row's metrics (and per-clip figures) here")
    p.add_argument("--strip", help="write a PNG strip here: ground-truth frames, the performer's, and (unless "
                                   "--no-renderer-only) the generator's fed the real keypoints")
    p.add_argument("--keypoints-only", action="store_true",
                   help="run the keypoint stage alone: keypoint error, arm amplitude and sync beside the still "
                        "pose and the real motion, no frames (minutes instead of tens of minutes; default: all rows)")
    p.add_argument("--no-renderer-only", action="store_true",
                   help="skip the renderer-only row (the generator fed the real keypoints; it costs as much "
                        "as the model's own pass)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _run_eval(args: argparse.Namespace) -> int:
    from letsplay.models.evaluate import evaluate_checkpoint, result_table

    _threads(args)
    res = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, max_seconds=args.max_seconds,
                              device=args.device, strip=args.strip, renderer_only=not args.no_renderer_only,
                              kp_only=args.keypoints_only)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=1) + "\n")
    print(f"{res.clips} clips, {res.frames} frames, {res.seconds:.0f} s")
    print(result_table(res))
    print("moving PSNR: over the pixels that differ from the clip's still picture; checker: 2-pixel-period "
          "energy / the real frames' (1 = as much); bow/slide: share of the real bow's (cello) or slide's "
          "(trombone) pixels the frames draw; arm amp: RMS travel of the right (bowing / slide) wrist; "
          "sync C: 0 = chance, 1 = every motion event on an onset; lag: frames the motion comes after the onsets")
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
    from letsplay.models.ablation import run_ablations

    _threads(args)
    tables = run_ablations(args.data, args.preset, _train_config(args, "all"), args.out, variants=args.variants,
                           split=args.split, max_seconds=args.max_seconds, device=args.device)
    print(tables["markdown"])
    return 0


COMMANDS = [
    ("train", "train a Performer stage by stage (KP, CVG, STU; optional end-to-end)", _add_train, _run_train),
    ("eval", "evaluate a Performer on held-out pieces beside its baselines: PSNR, SSIM, keypoints, sync",
     _add_eval, _run_eval),
    ("ablate", "train and evaluate the paper's Table I / II variants; write both tables", _add_ablate, _run_ablate),
]
