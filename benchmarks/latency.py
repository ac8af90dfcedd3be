"""Audio-to-frame latency through the real engine, with audio arriving at real-time pace.

    python -m benchmarks.latency --json benchmarks/results/latency_cpu.json
    python -m benchmarks.latency --backend torch --seconds 60 --json benchmarks/results/latency_cpu_torch.json
    python -m benchmarks.latency --preset tiny --backend onnxruntime --seconds 10
    python -m benchmarks.latency --audio music.wav --performer trombone

The audio (synthetic music, or ``--audio FILE``) is released by the wall clock in
blocks of ``--block`` samples (default 256, 5.8 ms: what a microphone delivers), as a
live input would be, and goes through ``realtime/engine.py``'s ``Engine`` in live mode
(``EngineConfig(realtime=True)``): StreamingCQT, frame scheduling, the backend, and
frame dropping when inference falls behind. Latency is the engine's own figure: from
the wall time the sample that completed a frame's window arrived to the wall time the
frame left the backend. Reported: p50 / p95 / p99 / max, the frames per second
actually shown, and the frames dropped.

Default performer: the shipped one (``cello``, preset realtime) through onnxruntime
(exported once into the cache, as ``letsplay live`` does); ``--preset NAME`` runs an
untrained preset instead (same cost).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import dist, machine, markdown_table, progress_bar, set_threads, write_json

log = logging.getLogger(__name__)


def open_for(performer: str | None, backend: str, preset: str | None, instrument: str | None,
             compute: str | None, threads: int | None, seed: int = 0, pipeline: bool = False):
    """(backend, audio spec, video spec, description of the performer)."""
    from letsplay.realtime.backends import BackendOptions, open_backend
    from letsplay.realtime.performers import resolve_performer

    if preset is not None:
        import torch

        from letsplay.export.onnx import export_onnx
        from letsplay.models.performer import Performer
        from letsplay.models.presets import preset as make_preset
        from letsplay.realtime.backends import OrtBackend, TorchBackend

        torch.manual_seed(seed)
        perf = Performer(make_preset(preset, instrument=instrument or "cello")).eval()
        if backend == "torch":
            be = TorchBackend(perf, compute or "cpu")
        elif backend == "onnxruntime":
            folder = Path(tempfile.mkdtemp(prefix="letsplay-latency-"))
            export_onnx(perf, folder, stages=False, cqt=False, pipeline=pipeline)
            be = OrtBackend(folder, provider=compute or "cpu", threads=threads, pipeline=pipeline)
        else:
            raise ValueError(f"--preset runs with --backend torch or onnxruntime, not {backend!r}")
        return be, perf.cfg.audio, perf.cfg.video, {"name": f"untrained {preset}", "preset": preset}
    ref = resolve_performer(performer, instrument)
    be = open_backend(ref, BackendOptions(backend=backend, compute=compute, threads=threads, pipeline=pipeline))
    pre = be.cfg.preset if be.cfg is not None else be.manifest.data.get("preset")
    return be, be.audio, be.video, {"name": ref.name, "path": str(ref.path), "preset": pre}


def run(seconds: float = 20.0, performer: str | None = None, backend: str = "onnxruntime",
        preset: str | None = None, instrument: str | None = None, compute: str | None = None,
        threads: int | None = None, audio_file: str | None = None, block: int = 256, max_pending: int = 1,
        seed: int = 0, progress: bool = True, pipeline: bool | None = None) -> dict:
    """Run the live engine for ``seconds`` of audio at real-time pace; the JSON-able result.
    ``pipeline`` None: as ``letsplay live --pipeline auto`` decides."""
    from letsplay.realtime.backends import describe
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sinks import CallbackSink
    from letsplay.realtime.sources import ArraySource, FileSource

    from .soak import SyntheticMusic

    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    from letsplay.realtime.backends import auto_pipeline

    if pipeline is None:
        pipeline = auto_pipeline(backend, compute)
    threads_used = set_threads(threads or (1 if pipeline else None))  # as `letsplay live` does
    be, audio, video, who = open_for(performer, backend, preset, instrument, compute, threads, seed, pipeline)
    sr = audio.sample_rate
    if audio_file:
        src = FileSource(audio_file, sr, realtime=True, block=block)
    else:
        src = ArraySource(SyntheticMusic(sr, seed).block(int(seconds * sr)), sr, realtime=True, block=block)
    expected = int(seconds * video.fps)
    shown: list[float] = []
    bar = progress_bar(expected, "latency", unit="frame", enabled=progress)

    def on_frame(f) -> None:
        shown.append(time.monotonic())
        bar.update(1)

    cfg = EngineConfig(realtime=True, max_pending=max_pending, latency_window=max(20000, 2 * expected),
                       pipeline=pipeline)
    eng = Engine(be, audio, video, src, [CallbackSink(on_frame)], cfg)
    t0 = time.monotonic()
    stats = eng.run(seconds)
    wall = time.monotonic() - t0
    bar.close()
    lat = list(eng.stats.latency_ms)
    if not lat:
        raise RuntimeError("the engine rendered no frame with a latency figure; is the audio too short?")
    fps = (len(shown) - 1) / (shown[-1] - shown[0]) if len(shown) > 1 else 0.0
    total = stats["frames"] + stats["dropped"]
    return {
        "benchmark": "latency",
        "machine": machine(),
        "threads": threads_used,  # torch's
        "ort_threads": threads,  # None: onnxruntime's default
        "backend": be.name,
        "device": str(be.device),
        "performer": who,
        "video": video.to_dict(),
        "source": {"kind": "file" if audio_file else "synthetic music", "path": audio_file, "block": block,
                   "pace": "real time"},
        "engine": {"realtime": True, "max_pending": max_pending, "pipeline": pipeline},
        "backend_description": describe(be),
        "audio_seconds": stats["audio_seconds"],
        "wall_seconds": round(wall, 3),
        "frames": stats["frames"],
        "dropped": stats["dropped"],
        "dropped_pct": 100.0 * stats["dropped"] / max(1, total),
        "errors": stats["errors"],
        "fps": fps,  # frames actually shown per wall second
        "target_fps": video.fps,
        "latency_ms": dist(lat),
        "latency_percentiles_ms": {f"p{q:g}": float(np.percentile(lat, q))
                                   for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9)},
        "stage_ms_median": stats["stage_ms"],
        "engine_stats": stats,
    }


def markdown(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"{r['performer']['name']} ({r['performer'].get('preset')}) on {r['backend_description']}"
            f"{', pipelined' if r['engine'].get('pipeline') else ''}, "
            f"{r['audio_seconds']:.1f} s of audio at real-time pace, blocks of {r['source']['block']} samples\n\n"
            + markdown_table(["p50 ms", "p95 ms", "p99 ms", "max ms", "fps", "target fps", "dropped", "errors"],
                             [[lat["median_ms"], lat["p95_ms"], lat["p99_ms"], lat["max_ms"], r["fps"],
                               r["target_fps"], f"{r['dropped']} ({r['dropped_pct']:.1f}%)", r["errors"]]]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="audio seconds (= wall seconds), default 20")
    ap.add_argument("--performer", default=None, help="shipped name, checkpoint or exported folder (default cello)")
    ap.add_argument("--instrument", choices=["cello", "trombone"], default=None)
    ap.add_argument("--preset", choices=["tiny", "realtime", "paper"], default=None,
                    help="an untrained preset instead of a performer")
    ap.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default="onnxruntime")
    ap.add_argument("--compute", choices=["cpu", "cuda"], default=None, help="where the backend runs")
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads")
    ap.add_argument("--audio", default=None, help="an audio file instead of synthetic music")
    ap.add_argument("--block", type=int, default=256, help="samples released per read (default 256)")
    ap.add_argument("--max-pending", type=int, default=1)
    ap.add_argument("--pipeline", choices=["auto", "on", "off"], default="auto",
                    help="front + back halves of each frame on two threads (EngineConfig.pipeline); auto: as "
                         "`letsplay live` decides (on for onnxruntime on a CPU of <= 2 cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = run(args.seconds, args.performer, args.backend, args.preset, args.instrument, args.compute, args.threads,
            args.audio, args.block, args.max_pending,
            pipeline={"auto": None, "on": True, "off": False}[args.pipeline])
    write_json(r, args.json)
    print(markdown(r))
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
