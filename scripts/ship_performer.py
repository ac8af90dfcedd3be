"""Make a shipped performer from a trained checkpoint: fp16 tensors, its held-out evaluation
and the training facts, into ``models/performers/<instrument>.{safetensors,json}``.

    python scripts/ship_performer.py CHECKPOINT --data DATASET [--runs RUN_DIR ...]
        [--max-seconds 10] [--strip docs/img/cello_heldout_strip.png] [--out models/performers]

The checkpoint is evaluated as loaded from the fp16 file (what users get), on the
dataset's ``test`` split, each clip from a fresh state frame by frame (``letsplay eval``),
beside its baselines: the JSON's ``eval.rows`` holds the model, still picture, still pose,
renderer-only and ground-truth rows.
``--runs`` names the training folders the stages came from; their configs and last logged
metrics go into the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from letsplay.models.evaluate import evaluate_checkpoint, result_table
from letsplay.models.performer import Performer


def _last_logged(run: Path) -> dict | None:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def provenance(data: str | Path, split: str = "test") -> dict:
    """What a shipped performer was trained and evaluated on, from its dataset's manifest:
    the performer identity seeds, the pieces of the training and the held-out split, and the
    dataset's own config (so ``letsplay data synth`` can make it again). Paths stay relative."""
    from letsplay.models.data.dataset_format import load_manifest

    m = load_manifest(Path(data))
    clips = m["clips"]
    pieces = {s: sorted({c["piece"] for c in clips if c["split"] == s}) for s in ("train", "val", split)}
    return {"identity_seeds": sorted({int(c["identity_seed"]) for c in clips}),
            "train_pieces": pieces["train"], "val_pieces": pieces["val"], "eval_pieces": pieces[split],
            "eval_split": split, "dataset_kind": m.get("kind"), "dataset_config": m.get("config", {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="dataset with a held-out test split")
    ap.add_argument("--runs", nargs="*", default=[], help="training folders the stages came from")
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--strip", default=None, help="PNG strip of generated vs ground-truth frames")
    ap.add_argument("--out", default="models/performers")
    ap.add_argument("--keep-runs", action="store_true",
                    help="keep the runs the performer's existing JSON records (a stage retrained, the others kept)")
    ap.add_argument("--source", default=None, help="what the checkpoint is, in words (default: its file name)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model = Performer.load(args.checkpoint)
    out = Path(args.out)
    dst = out / f"{model.cfg.instrument}.safetensors"
    model.save(dst, dtype=torch.float16)
    res = evaluate_checkpoint(dst, args.data, "test", args.max_seconds, strip=args.strip)
    old = out / f"{model.cfg.instrument}.json"
    runs = json.loads(old.read_text()).get("runs", {}) if args.keep_runs and old.is_file() else {}
    for r in map(Path, args.runs):
        cfg = r / "train_config.json"
        runs[r.name] = {"train_config": json.loads(cfg.read_text()) if cfg.is_file() else None,
                        "last_logged": _last_logged(r)}
    prov = provenance(args.data)
    info = {"instrument": model.cfg.instrument, "preset": model.cfg.preset,
            "source": args.source or Path(args.checkpoint).name,
            "file_mb": round(dst.stat().st_size / 1e6, 3), "identity_seed": prov["identity_seeds"][0],
            "data": prov, "eval_max_seconds_per_clip": args.max_seconds,
            "figures": {"strip": args.strip}, "eval": res.to_dict(), "runs": runs}
    (out / f"{model.cfg.instrument}.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{dst}: held-out evaluation, {res.clips} clips, {res.frames} frames")
    print(result_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
