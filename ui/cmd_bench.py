"""`letsplay bench`: how fast this machine renders, in a few seconds (or the full benchmark).

The quick run: presets tiny and realtime, batch 1, a few frames, torch eager and
onnxruntime (the exported fused graph, kept in the cache after the first run), the
roof (this machine's GEMM rate) and the naive-pipeline baseline. ``--full`` runs
``benchmarks/fps.py`` with its defaults (every backend available, 1 and 4 streams).
The measuring code is ``benchmarks/`` of the source checkout (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

PRESET_NAMES = ("tiny", "realtime", "paper")


def _fps_module():
    """``benchmarks.fps`` from the checkout this package runs from."""
    try:
        return importlib.import_module("benchmarks.fps")
    except ImportError:
        root = Path(__file__).resolve().parent.parent
        if not (root / "benchmarks" / "fps.py").is_file():
            raise ValueError("letsplay bench needs the benchmarks/ folder of a source checkout; install "
                             "letsplay from its repository (pip install -e .) to run it") from None
        sys.path.insert(0, str(root))
        return importlib.import_module("benchmarks.fps")


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="write the full result (JSON) here")
    p.add_argument("--full", action="store_true",
                   help="the full fps benchmark: every available backend, 1 and 4 streams (minutes)")
    p.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=None,
                   help="presets to measure (default: tiny realtime)")
    p.add_argument("--frames", type=int, default=None, help="frames timed per backend (default 20; --full 200)")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads (default: torch's)")
    p.add_argument("--no-cache", action="store_true", help="export the ONNX graphs afresh (quick run)")


def _run_bench(args: argparse.Namespace) -> int:
    fps = _fps_module()
    from benchmarks.common import write_json

    presets = tuple(args.presets or ("tiny", "realtime"))
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.full:
        r = fps.run(presets, frames=args.frames or 200, threads=args.threads)
    else:
        from letsplay.realtime.performers import cache_dir

        frames = args.frames or 20
        print(f"quick benchmark: {', '.join(presets)}, batch 1, {frames} frames, torch + onnxruntime "
              f"(--full for every backend)", file=sys.stderr)
        r = fps.run(presets, streams=(1,), frames=frames, block=5, warmup=3, backends=("torch", "onnxruntime"),
                    ort_stage_graphs=False, threads=args.threads, gemm_n=1024, gemm_repeats=5,
                    onnx_cache=None if args.no_cache else str(cache_dir() / "bench-onnx"))
    ran = dict.fromkeys(f"{x['backend']} on {x['device']}" + (f" (threads={x['threads']})" if x["threads"] else "")
                        for x in r["results"])
    print("ran: " + "; ".join(ran))
    print(fps.markdown(r))
    if args.json:
        write_json(r, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


COMMANDS = [
    ("bench", "measure frames/s per backend and stage on this machine (quick; --full for everything)",
     _add_bench, _run_bench),
]
