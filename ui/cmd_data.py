"""`letsplay data synth|prepare|preview|info`: make and inspect performance datasets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

INSTRUMENT_NAMES = ("cello", "trombone")


def _add_data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="render a synthetic dataset (soundfont audio + animated performer)",
                       description="Render a synthetic performance dataset: scores from the music21 corpus "
                                   "and seeded random melodies (--minutes), or exactly the pieces you give "
                                   "(--score), played with a General MIDI soundfont, and a drawn performer "
                                   "whose motion follows the physics of playing, with exact keypoints. "
                                   "Resumable: run the same command again after an interruption.")
    s.add_argument("--instrument", choices=INSTRUMENT_NAMES, required=True,
                   help="instrument the performer plays (required)")
    s.add_argument("--minutes", type=float, default=None,
                   help="total length of a corpus/random dataset, in minutes (required unless --score is given; "
                        "not allowed with it)")
    s.add_argument("--score", nargs="+", metavar="FILE", default=None,
                   help="play exactly these pieces, whole: MIDI (.mid, .midi; its timing and velocities) or "
                        "MusicXML (.musicxml, .xml, .mxl); moved by octaves into the instrument's range "
                        "(default: corpus pieces and random melodies, see --minutes)")
    s.add_argument("--part", metavar="NAME", default=None,
                   help="with --score: the part (MusicXML) or track (MIDI) to play, by name (default: the one "
                        "named like the instrument or with its MIDI program, else the only one, else the lowest)")
    s.add_argument("--identity", type=int, metavar="SEED", default=None,
                   help="one performer for every clip: the identity seed, as stored in clip.json's "
                        "identity_seed (default: --identities performers chosen by --seed)")
    s.add_argument("--split", choices=("auto", "train", "val", "test"), default=None,
                   help="split of every clip; auto = seeded, by piece (default: test with --score, else auto)")
    s.add_argument("--keep-splits", metavar="DATASET", default=None,
                   help="pieces that DATASET also holds keep its split (train, val, test) here, so a bigger set "
                        "made beside it never trains on its held-out pieces (default: every split seeded)")
    s.add_argument("--out", required=True,
                   help="dataset folder (required): new, empty, or an unfinished run of the same command")
    s.add_argument("--workers", type=int, default=None, help="parallel processes, >= 1 (default: CPU count)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed for pieces, tempi, performers, melodies, expression (default 0)")
    s.add_argument("--clip-seconds", type=float, default=30.0,
                   help="clip length in seconds; a piece's short remainder joins its last clip (default 30)")
    s.add_argument("--identities", type=int, default=None,
                   help="performers (identity seeds) to use, >= 1 (default 4; not with --identity)")
    s.add_argument("--synth", choices=("auto", "tinysoundfont", "fluidsynth"), default="auto",
                   help="audio backend (default auto: fluidsynth + FluidR3_GM when installed, else "
                        "tinysoundfont + TimGM6mb)")
    s.add_argument("--soundfont", metavar="FILE",
                   help="play the notes with this General MIDI soundfont (.sf2; .sf3 needs --synth fluidsynth), "
                        "e.g. Debian's MuseScore_General.sf3: the same pieces and motion in another instrument's "
                        "sound, to train on more than one (default: the backend's own)")
    s.add_argument("--frames", choices=("mp4", "jpeg"), default="mp4",
                   help="how frames are stored: H.264 video.mp4 or one JPEG per frame (default mp4)")
    s.set_defaults(_data_run=_run_synth)

    pr = sub.add_parser("prepare", help="turn performance videos (with audio) into a dataset",
                        description="Turn recordings (video files with an audio track) into a letsplay "
                                    "dataset: square crop, resize, retime to the frame rate, mono audio, "
                                    "and 67 keypoints per frame from OpenPose JSON (--openpose) or from "
                                    "MediaPipe (the optional [pose] extra).")
    pr.add_argument("videos", nargs="+", help="video files")
    pr.add_argument("--out", required=True, help="dataset folder")
    pr.add_argument("--instrument", required=True, help="instrument played (e.g. cello, trombone)")
    pr.add_argument("--openpose", help="OpenPose JSON output folder for the (single) video")
    pr.add_argument("--clip-seconds", type=float, help="cut each video into clips this long (default: one clip)")
    pr.add_argument("--split", choices=("train", "val", "test"), help="put everything in one split "
                                                                       "(default: seeded, by video)")
    pr.add_argument("--seed", type=int, default=0, help="seed for the split assignment (default 0)")
    pr.set_defaults(_data_run=_run_prepare)

    pv = sub.add_parser("preview", help="a PNG grid of frames with keypoints drawn over them",
                        description="Save a PNG grid of frames, spread evenly over a dataset, each shown "
                                    "plain and with its keypoints and skeleton drawn over it.")
    pv.add_argument("datasets", nargs="+", help="letsplay dataset folders or Sub-URMP trees")
    pv.add_argument("--out", required=True, help="PNG path")
    pv.add_argument("-n", type=int, default=8, help="frames (default 8)")
    pv.add_argument("--cols", type=int, default=4, help="columns (default 4)")
    pv.add_argument("--overlay-only", action="store_true", help="only the frames with keypoints")
    pv.set_defaults(_data_run=_run_preview)

    info = sub.add_parser("info", help="summary of a dataset: clips, minutes and splits",
                          description="Summarise a letsplay dataset: kind, instrument, clips and minutes "
                                      "per split, and whether every planned clip is written.")
    info.add_argument("dataset", help="dataset folder")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(_data_run=_run_info)


def _run_data(args: argparse.Namespace) -> int:
    try:
        return int(args._data_run(args))
    except RuntimeError as e:  # a missing optional dependency or program: say which, no traceback
        print(f"letsplay data {args.data_action}: error: {e}", file=sys.stderr)
        return 2


def _run_synth(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from letsplay.models.data.synth_dataset import SynthDatasetConfig, synthesize_dataset

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (parallel processes), got {args.workers}")
    workers = args.workers or os.cpu_count() or 1
    if args.identity is not None and args.identities is not None:
        raise ValueError("--identity (one performer) and --identities (how many) exclude each other; give one")
    cfg = SynthDatasetConfig(instrument=args.instrument, minutes=args.minutes, seed=args.seed,
                             clip_seconds=args.clip_seconds,
                             identities=4 if args.identities is None else args.identities, synth=args.synth,
                             soundfont=args.soundfont,
                             frames=args.frames, score_files=tuple(args.score or ()), part=args.part,
                             identity=args.identity, split=args.split, keep_splits=args.keep_splits)
    t0 = time.monotonic()
    bar = None  # made at the first progress report: a request refused up front prints no bar
    seconds = 0.0

    def progress(done: int, total: int, secs: float) -> None:
        nonlocal seconds, bar
        if bar is None:
            bar = tqdm(total=total, unit="clip", desc=f"synth {args.instrument}", dynamic_ncols=True)
        seconds += secs
        bar.total = total
        bar.n = done
        bar.set_postfix_str(f"{seconds / 60:.1f} min rendered")
        bar.refresh()

    try:
        manifest = synthesize_dataset(Path(args.out), cfg, workers=workers, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    splits = _split_minutes(manifest["clips"])
    print(f"{args.out}: {len(manifest['clips'])} clips, "
          + ", ".join(f"{k} {v:.1f} min" for k, v in splits.items())
          + f" ({manifest['config']['synth']}); {time.monotonic() - t0:.0f} s")
    return 0


def _split_minutes(clips: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in clips:
        out[c["split"]] = out.get(c["split"], 0.0) + float(c.get("duration", 0.0)) / 60.0
    return dict(sorted(out.items()))


def _run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from letsplay.models.data.prepare import prepare_videos

    bar = tqdm(total=len(args.videos), unit="video", desc="prepare", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    try:
        manifest = prepare_videos(args.videos, args.out, args.instrument, openpose=args.openpose,
                                  clip_seconds=args.clip_seconds, seed=args.seed, split=args.split,
                                  progress=progress)
    finally:
        bar.close()
    print(f"{args.out}: {len(manifest['clips'])} clips, "
          + ", ".join(f"{k} {v:.1f} min" for k, v in _split_minutes(manifest["clips"]).items()))
    return 0


def _run_preview(args: argparse.Namespace) -> int:
    import numpy as np

    from letsplay.models.data.preview import preview_grid, save_png
    from letsplay.models.data.torch_dataset import open_sources

    per = [open_sources(d) for d in args.datasets]
    # the same number of samples from each dataset, in dataset order
    k = max(1, args.n // len(per))
    rows = [preview_grid(clips, n=k, cols=k, pairs=not args.overlay_only) for clips in per]
    grid = _regrid(np.concatenate(rows, axis=1), k * len(per), args.cols)
    save_png(args.out, grid)
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


def _regrid(row: np.ndarray, n: int, cols: int) -> np.ndarray:
    """A one-row grid of n tiles -> rows of ``cols`` tiles."""
    import numpy as np

    th, tw = row.shape[0], row.shape[1] // n
    rows = -(-n // cols)
    out = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for j in range(n):
        r, c = divmod(j, cols)
        out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = row[:, j * tw:(j + 1) * tw]
    return out


def _run_info(args: argparse.Namespace) -> int:
    from letsplay.models.data import dataset_format as fmt

    m = fmt.load_manifest(Path(args.dataset))
    done = [c for c in m["clips"] if fmt.clip_complete(Path(args.dataset), c["id"])]
    summary = {
        "kind": m["kind"], "instrument": m["instrument"], "format_version": m["format_version"],
        "clips": len(m["clips"]), "clips_written": len(done), "complete": len(done) == len(m["clips"]),
        "minutes": _split_minutes(m["clips"]), "audio_spec": m["audio_spec"], "video_spec": m["video_spec"],
        "config": m["config"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{args.dataset}: {m['kind']} {m['instrument']} dataset, format v{m['format_version']}")
    print(f"  clips: {len(done)}/{len(m['clips'])} written" + ("" if summary["complete"] else " (unfinished)"))
    for k, v in summary["minutes"].items():
        print(f"  {k}: {v:.1f} min")
    return 0


COMMANDS = [("data", "make and inspect performance datasets (synth, prepare, preview, info)", _add_data, _run_data)]
