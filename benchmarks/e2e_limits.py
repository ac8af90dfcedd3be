"""What limits a performer's frames end to end: its generator fed keypoints in which one
thing KHP must hear is replaced by the truth (``letsplay.models.limits``).

    python -m benchmarks.e2e_limits --checkpoint models/performers/trombone.safetensors \\
        --data data/trombone30 --json benchmarks/results/e2e_limits_trombone.json

Rows, each scored on the same held-out frames (first ``--max-seconds`` of each clip):
the model as it hears; with the real onsets; with every motion state it reads the arm from
real; the model plus the performer's real idle motion (the sway and nod that follow the
clock, not the music); the audio ceiling (the real keypoints, the idle motion held at its
mean: the best a performer moved only by what it hears could draw); the real keypoints
(renderer only); the still picture. ``--strip``: where each row's frames differ from the
real ones, to look at. Needs a synthetic set (the idle motion is rebuilt from
each clip's identity seed and notes).
"""

from __future__ import annotations

import argparse
import sys

import torch

from .common import machine, markdown_table, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a performer file (.safetensors)")
    ap.add_argument("--data", required=True, help="the synthetic set its held-out clips come from")
    ap.add_argument("--split", default="test", help="the held-out clips (default: test)")
    ap.add_argument("--max-seconds", type=float, default=10.0, help="the first N seconds of each clip (default: 10)")
    ap.add_argument("--clips", type=int, default=None, help="at most this many clips (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--strip", default=None,
                    help="a PNG: the first clip's real frames, and below where the model, the model with the "
                         "real idle motion, the audio ceiling and the real keypoints differ from them (|error| x 4)")
    args = ap.parse_args(argv)
    if args.max_seconds <= 0:
        ap.error(f"--max-seconds must be > 0, got {args.max_seconds}")
    torch.set_num_threads(args.threads)
    from letsplay.models.evaluate import held_out_clips
    from letsplay.models.limits import measure
    from letsplay.models.performer import Performer

    try:
        model = Performer.load(args.checkpoint)
        clips = held_out_clips(args.data, args.split, model.cfg.instrument)[:args.clips]
        r = measure(model, clips, args.max_seconds, strip=args.strip)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = {"benchmark": "e2e_limits", "machine": machine(), "checkpoint": args.checkpoint, "data": args.data,
         "split": args.split, "max_seconds": args.max_seconds, **r}
    write_json(r, args.json)
    still = r["rows"]["still_picture"]["psnr"]
    print(markdown_table(["keypoints fed to the generator", "PSNR dB", "over the still picture dB",
                          "keypoint error / still pose's"],
                         [[name, v["psnr"], v["psnr"] - still, v.get("kp_error")] for name, v in r["rows"].items()]))
    print(f"{r['instrument']}: {r['clips']} clips, {r['frames']} frames, {r['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
