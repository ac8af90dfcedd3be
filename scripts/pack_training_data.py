"""Pack a letsplay dataset's split for training on another machine: each clip's video,
keypoints, motion and notes, with its CQT (float16) in place of its audio.

    python scripts/pack_training_data.py DATASET OUT [--split train] [--every 1]
        [--lookahead-ms 200] [--max-mb 0] [--keypoints-only]

A packed clip is a third of the size (the 44.1 kHz audio is the largest file of a clip),
and the training machine needs no audio stack (soundfile) to read it: the dataset loader
takes the packed CQT when it was made for the audio spec it asks for and reaches far
enough for the lookahead (``--lookahead-ms``, the largest one that will train on it).
``--keypoints-only`` keeps only each clip's first video frame (keypoint training reads
no frames beyond the frame size): a sixth of the original. The packed folder is a letsplay
dataset: ``letsplay train --data OUT`` reads it. It cannot be evaluated (evaluation streams
the audio) or rendered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.readers import open_dataset
from letsplay.models.data.torch_dataset import PerformanceDataset
from letsplay.models.spec import AudioSpec, VideoSpec

COPIED = ("video.mp4", "keypoints.npz", "motion.npz", "notes.json")


def pack(src: Path, out: Path, split: str = "train", every: int = 1, lookahead_ms: float = 200.0,
         max_mb: float = 0.0, keypoints_only: bool = False) -> list[str]:
    """Write the packed clips of ``split`` (every ``every``-th clip, until ``max_mb``
    megabytes when > 0) into ``out``; returns the packed clip ids."""
    m = fmt.load_manifest(src)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose a new folder")
    clips = open_dataset(src, split)[::every]
    if not clips:
        raise SystemExit(f"{src} has no complete clips in split {split!r}")
    spec = AudioSpec(**m["audio_spec"])
    done: list[str] = []
    size = 0
    for clip in clips:
        video = VideoSpec(**{**m["video_spec"], "fps": clip.fps, "lookahead_ms": lookahead_ms})
        ds = PerformanceDataset([clip], seq_len=1, audio_spec=spec, video_spec=video)
        cqt = ds.clip_cqt(0).numpy().astype(np.float16)
        dst = fmt.clip_dir(out, clip.id)
        dst.mkdir(parents=True)
        for name in COPIED:
            if (clip.files.root / name).is_file() and not (keypoints_only and name == "video.mp4"):
                shutil.copy2(clip.files.root / name, dst / name)
        if keypoints_only:  # the first frame alone: its size is all keypoint training reads
            with fmt.VideoWriter(dst / "video.mp4", VideoSpec(fps=clip.fps, height=video.height,
                                                              width=video.width)) as w:
                w.write(clip.frames(0, 1)[0])
        np.save(dst / "cqt.npy", cqt)
        meta = dict(clip.meta)
        meta["packed_cqt"] = {"audio_spec": json.loads(spec.to_json()), "lookahead_ms": lookahead_ms,
                              "columns": int(cqt.shape[-1]), "dtype": "float16",
                              "video": "first frame" if keypoints_only else "all",
                              "sha1": hashlib.sha1(cqt.tobytes()).hexdigest()[:16]}
        fmt.write_json_atomic(dst / fmt.CLIP_MANIFEST, meta)  # last: the clip is complete
        size += sum(f.stat().st_size for f in dst.iterdir())
        done.append(clip.id)
        if max_mb > 0 and size > max_mb * 1e6:
            break
    manifest = {**m, "clips": [c for c in m["clips"] if c["id"] in set(done)],
                "packed": {"from": str(src), "split": split, "clips": len(done)}}
    fmt.write_json_atomic(out / fmt.MANIFEST, manifest)
    print(f"packed {len(done)} {split} clips of {src} into {out}: {size / 1e6:.1f} MB")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--every", type=int, default=1, help="take every N-th clip of the split (default 1: all)")
    ap.add_argument("--lookahead-ms", type=float, default=200.0,
                    help="the largest lookahead that will train on the pack (default 200 ms)")
    ap.add_argument("--max-mb", type=float, default=0.0, help="stop once the pack reaches this size (0: no limit)")
    ap.add_argument("--keypoints-only", action="store_true",
                    help="keep only each clip's first video frame (enough for keypoint training)")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error("--every must be >= 1")
    pack(args.dataset, args.out, args.split, args.every, args.lookahead_ms, args.max_mb, args.keypoints_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
