"""`letsplay bench`: how fast this machine renders, in a few seconds (or the full benchmark).

The quick run: presets tiny and realtime, batch 1, a few frames, torch eager and
onnxruntime (the exported fused graph, kept in the cache after the first run), the
roof (this machine's GEMM rate) and the naive-pipeline baseline. ``--full`` runs
``benchmarks/fps.py`` with its defaults (every backend available, 1 and 4 streams).
The measuring code is ``benchmarks/``, installed with the package as ``letsplay.benchmarks``.

Both end with the live check: the shipped performer on the backend ``letsplay live``
would pick here (``--backend auto``, ``--pipeline auto``: front and back halves on two
threads where that is how live runs), every frame of a few seconds of the demo music
through the real engine, and a one-line verdict: can this machine run ``live`` at
30 fps? Yes when a frame takes at most :data:`LIVE_MARGIN` of the 1/30 s budget (the
window, the audio thread and the system need the rest), borderline up to the whole
budget, no beyond it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PRESET_NAMES = ("tiny", "realtime", "paper")
LIVE_FPS = 30.0  # the frame rate `letsplay live` shows
LIVE_MARGIN = 0.8  # a frame may take this share of its 1/LIVE_FPS budget for a clear "yes"
LIVE_SECONDS = 4.0  # demo music the live check renders (its frames' throughput is measured)


def _fps_module():
    """The fps benchmark, installed with letsplay as ``letsplay.benchmarks``."""
    return importlib.import_module("letsplay.benchmarks.fps")


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="write the full result (JSON) here")
    p.add_argument("--full", action="store_true",
                   help="the full fps benchmark: every available backend, 1 and 4 streams (minutes)")
    p.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=None,
                   help="presets to measure (default: tiny realtime)")
    p.add_argument("--frames", type=int, default=None, help="frames timed per backend (default 20; --full 200)")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads (default: torch's)")
    p.add_argument("--no-cache", action="store_true", help="export the ONNX graphs afresh (quick run)")
    p.add_argument("--no-live-check", action="store_true",
                   help="skip the live check (the shipped performer as `letsplay live` runs it, and the verdict)")


def _run_bench(args: argparse.Namespace) -> int:
    fps = _fps_module()
    from letsplay.benchmarks.common import write_json

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
    if not args.no_live_check:
        r["live_check"] = live_check(threads=args.threads)
        print(r["live_check"]["verdict"])
    if args.json:
        write_json(r, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def live_check(seconds: float = LIVE_SECONDS, threads: int | None = None) -> dict:
    """The shipped performer run as ``letsplay live`` runs it (backend auto, pipeline
    auto), every frame of ``seconds`` of the demo music computed: the frames' throughput,
    the time per frame and the verdict line for ``live`` at :data:`LIVE_FPS`."""
    import torch

    from letsplay.realtime.backends import BackendOptions, describe, open_backend
    from letsplay.realtime.demo import demo_audio
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.performers import resolve_performer
    from letsplay.realtime.sources import ArraySource

    ref = resolve_performer(None)
    backend = open_backend(ref, BackendOptions(backend="auto", threads=threads, pipeline=None))
    held = torch.get_num_threads()
    if backend.pipeline and not threads:
        torch.set_num_threads(1)  # as live does: one core per half
    try:
        audio, video = backend.audio, backend.video
        src = ArraySource(demo_audio(ref.name, audio.sample_rate, seconds), audio.sample_rate)
        eng = Engine(backend, audio, video, src, config=EngineConfig(realtime=False))
        stats = eng.run()
    finally:
        torch.set_num_threads(held)
    fps = eng.stats.fps()  # frames completed per second, from the first frame's end (start-up left out)
    if stats["errors"] or fps <= 0:
        raise RuntimeError(f"the live check rendered {stats['frames']} frames with {stats['errors']} errors")
    ms, budget = 1000.0 / fps, 1000.0 / LIVE_FPS
    how = describe(backend)
    if ms <= LIVE_MARGIN * budget:
        verdict = (f"live at {LIVE_FPS:.0f} fps: yes -- the {ref.name} performer takes {ms:.1f} ms a frame of the "
                   f"{budget:.1f} ms budget ({how})")
    elif ms <= budget:
        verdict = (f"live at {LIVE_FPS:.0f} fps: borderline -- the {ref.name} performer takes {ms:.1f} ms a frame of "
                   f"the {budget:.1f} ms budget ({how}); expect dropped frames when the machine is busy")
    else:
        verdict = (f"live at {LIVE_FPS:.0f} fps: no -- the {ref.name} performer takes {ms:.1f} ms a frame, over the "
                   f"{budget:.1f} ms budget ({how}); live shows about {fps:.0f} fps here")
    return {"performer": ref.name, "backend": how, "frames": stats["frames"], "fps": round(fps, 2),
            "ms_per_frame": round(ms, 2), "budget_ms": round(budget, 2), "margin": LIVE_MARGIN,
            "verdict": verdict}


COMMANDS = [
    ("bench", "measure frames/s per backend and stage on this machine (quick; --full for everything)",
     _add_bench, _run_bench),
]
