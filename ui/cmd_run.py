"""`letsplay render | live | demo | devices | export`: the engine from the command line.

Every running command takes ``--backend auto|torch|onnxruntime|tensorrt`` and
``--performer NAME|PATH`` and prints which backend and device actually ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--performer", default=None,
                   help="a shipped performer (cello, trombone), a checkpoint .safetensors or an exported folder "
                        "(default: the shipped performer for --instrument)")
    p.add_argument("--instrument", choices=["cello", "trombone"], default=None,
                   help="pick the shipped performer for this instrument")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default="auto")
    p.add_argument("--compute", default=None, choices=["cpu", "cuda"],
                   help="where the backend runs (default: the best available)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="accept an onnxruntime provider other than the one asked for (warns)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (onnxruntime)")
    p.add_argument("--lookahead", type=float, default=None, metavar="MS",
                   help="give the model MS of future audio; display is delayed as much")
    p.add_argument("--keypoints", default=None, metavar="NPZ", help="write per-frame keypoints to this .npz")
    p.add_argument("--osc", default=None, metavar="HOST:PORT",
                   help="send keypoints as OSC over UDP (one /letsplay/frame message per frame)")
    p.add_argument("--stats", default=None, metavar="JSON", help="write the run's statistics here")


def _open(args: argparse.Namespace):
    import dataclasses

    from letsplay.realtime.performers import open_backend, resolve_performer

    ref = resolve_performer(args.performer, args.instrument)
    backend = open_backend(ref, args.backend, args.compute, args.allow_fallback, args.threads)
    audio, video = _specs(backend)
    if args.lookahead is not None:
        video = dataclasses.replace(video, lookahead_ms=float(args.lookahead))
    print(f"performer {ref.name} ({ref.path}); backend {backend.name} on {backend.device}", file=sys.stderr)
    return ref, backend, audio, video


def _specs(backend):
    if hasattr(backend, "cfg"):
        return backend.cfg.audio, backend.cfg.video
    return backend.manifest.audio, backend.manifest.video


def _sinks(args: argparse.Namespace, record: str | None):
    from letsplay.realtime.sinks import KeypointsNpz, Mp4Recorder, OscSink

    sinks = []
    if record:
        sinks.append(Mp4Recorder(record))
    if args.keypoints:
        sinks.append(KeypointsNpz(args.keypoints))
    if args.osc:
        host, _, port = args.osc.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"--osc wants HOST:PORT, got {args.osc!r}")
        sinks.append(OscSink(host or "127.0.0.1", int(port)))
    return sinks


def _finish(args: argparse.Namespace, stats: dict) -> None:
    lat = stats["latency_ms"]
    print(f"{stats['frames']} frames from {stats['audio_seconds']:.2f} s of audio; {stats['fps']:.1f} fps; "
          f"latency p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms; "
          f"dropped {stats['dropped']}, errors {stats['errors']}; backend {stats['backend']}", file=sys.stderr)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2))


# --------------------------------------------------------------------------- render


def _add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="an audio file (wav, flac, ogg, mp3, ...)")
    p.add_argument("-o", "--out", default=None, help="write an mp4 (H.264 + AAC) here")
    p.add_argument("--raw", action="store_true",
                   help="raw rgb24 frames to stdout (pipe into: ffmpeg -f rawvideo -pix_fmt rgb24 "
                        "-s 256x256 -r 30 -i - out.mp4)")
    _common(p)


def _run_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from letsplay.models.audio import audio_info
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sinks import CallbackSink, RawVideoSink
    from letsplay.realtime.sources import FileSource

    if not (args.out or args.raw or args.keypoints or args.osc):
        raise ValueError("nothing to write: give -o OUT.mp4, --raw, --keypoints or --osc")
    info = audio_info(args.audio)
    _, backend, audio, video = _open(args)
    sinks = _sinks(args, args.out)
    if args.raw:
        sinks.append(RawVideoSink())
    bar = tqdm(total=int(info["seconds"] * video.fps), unit="frame", desc="render", disable=not sys.stderr.isatty())
    sinks.append(CallbackSink(lambda f: bar.update(1)))
    eng = Engine(backend, audio, video, FileSource(args.audio, audio.sample_rate), sinks,
                 EngineConfig(realtime=False))
    stats = eng.run()
    bar.close()
    _finish(args, stats)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- live / demo


def _add_live(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", dest="input", default=None, metavar="NAME",
                   help="input device: name (a unique substring) or index, see `letsplay devices` "
                        "(default: the system default)")
    p.add_argument("--record", default=None, metavar="MP4", help="record what is shown (and heard) to this mp4")
    p.add_argument("--seconds", type=float, default=None, help="stop after this much audio")
    p.add_argument("--no-window", action="store_true", help="headless: no Qt window even when a display exists")
    p.add_argument("--kiosk", action="store_true", help="fullscreen, no chrome, starts by itself (installations)")
    _common(p)


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _run_headless(args: argparse.Namespace, eng) -> dict:
    eng.start(args.seconds)
    last = 0.0
    try:
        while eng.running:
            time.sleep(0.1)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                s = eng.stats.snapshot()
                lost = "  INPUT DEVICE LOST (retrying)" if s["device_lost"] else ""
                print(f"\r{s['frames']:6d} frames  {s['fps']:5.1f} fps  latency p95 {s['latency_ms']['p95']:6.1f} ms"
                      f"  dropped {s['dropped']}  level {s['input_level_dbfs']:6.1f} dBFS{lost}   ",
                      end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        eng.stop()
        print(file=sys.stderr)
    if eng.error is not None:
        raise eng.error
    return eng.stats_dict()


def _run_live(args: argparse.Namespace) -> int:
    from letsplay.realtime.engine import Engine
    from letsplay.realtime.sources import MicSource

    _, backend, audio, video = _open(args)
    src = MicSource(audio.sample_rate, device=args.input)
    eng = Engine(backend, audio, video, src, _sinks(args, args.record))
    if _has_display() and not args.no_window:
        from letsplay.ui.window import run_window

        return run_window(eng, kiosk=args.kiosk, record_path=args.record)
    stats = _run_headless(args, eng)
    _finish(args, stats)
    if args.record:
        print(f"recorded {args.record}", file=sys.stderr)
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", default=None, metavar="MP4",
                   help="record to this mp4 (default without a display: demo.mp4)")
    p.add_argument("--seconds", type=float, default=None, help="play only this much of the demo piece")
    p.add_argument("--no-window", action="store_true", help="headless even when a display exists")
    p.add_argument("--no-play", action="store_true", help="do not play the music to the speakers")
    p.add_argument("--kiosk", action="store_true", help="fullscreen, no chrome (installations)")
    _common(p)


def _run_demo(args: argparse.Namespace) -> int:
    from letsplay.realtime.demo import demo_audio
    from letsplay.realtime.engine import Engine
    from letsplay.realtime.sources import ArraySource, output_available

    ref, backend, audio, video = _open(args)
    instrument = args.instrument or ("trombone" if "trombone" in ref.name else "cello")
    x = demo_audio(instrument, audio.sample_rate, args.seconds)
    window = _has_display() and not args.no_window
    record = args.record or (None if window else "demo.mp4")
    play = not args.no_play and output_available()  # without speakers: paced by the wall clock
    src = ArraySource(x, audio.sample_rate, realtime=True, play=play)
    eng = Engine(backend, audio, video, src, _sinks(args, record))
    print(f"demo: {instrument}, {len(x) / audio.sample_rate:.1f} s"
          f"{', playing to the speakers' if play else ''}", file=sys.stderr)
    if window:
        from letsplay.ui.window import run_window

        return run_window(eng, kiosk=args.kiosk, record_path=record)
    stats = _run_headless(args, eng)
    _finish(args, stats)
    print(f"no display: recorded the demo to {Path(record).resolve()}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- devices / export


def _add_devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _run_devices(args: argparse.Namespace) -> int:
    from letsplay.realtime.sources import list_devices

    devs = list_devices()
    if args.json:
        print(json.dumps(devs, indent=2))
        return 0
    if not devs:
        print("no audio devices (is PulseAudio / PipeWire running?)")
    for d in devs:
        print(f"{d['index']:3d}  {d['name']:40s} in {d['inputs']:2d}  out {d['outputs']:2d}  "
              f"{d['default_rate']:.0f} Hz  ({d['hostapi']})")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=["onnx", "trt"], help="onnx graphs, or TensorRT engines (GPU)")
    p.add_argument("--checkpoint", required=True, help="a Performer checkpoint (.safetensors) or shipped name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="TensorRT precision")
    p.add_argument("--no-stages", action="store_true", help="only the fused performer graph")


def _run_export(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from letsplay.export.onnx import export_onnx, sha256_file
    from letsplay.models.performer import Performer
    from letsplay.realtime.backends import OrtBackend, TorchBackend
    from letsplay.realtime.performers import resolve_performer

    ref = resolve_performer(args.checkpoint)
    if ref.kind != "checkpoint":
        raise ValueError(f"{args.checkpoint} is already an exported folder; give the checkpoint")
    model = Performer.load(ref.path)
    steps = ["performer"] + ([] if args.no_stages else ["khp", "cvg", "stu", "cqt_step"])
    bar = tqdm(total=len(steps), unit="graph", desc="export")
    export_onnx(model, args.out, checkpoint_sha256=sha256_file(ref.path), stages=not args.no_stages,
                progress=lambda name: (bar.set_postfix_str(name), bar.update(1)))
    bar.close()
    # Parity report: 100 frames of random windows, state fed back from the torch trajectory.
    tb, ob = TorchBackend(model), OrtBackend(args.out)
    rng = np.random.default_rng(0)
    st = tb.init_state(1)
    worst: dict[str, float] = {}
    for _ in range(100):
        w = rng.random((1, model.cfg.audio.n_bins, model.cfg.audio.window_columns), dtype=np.float32)
        feeds = {"window": w, **{"state_in." + k: v for k, v in st.items()}}
        a, b = tb.step(feeds), ob.step(feeds)
        st = {k: a["state_out." + k] for k in st}
        for k in a:
            worst[k] = max(worst.get(k, 0.0), float(np.abs(a[k] - b[k]).max()))
    print(f"exported {ref.name} to {args.out}; parity torch vs onnxruntime over 100 frames (max abs diff):")
    for k, v in worst.items():
        print(f"  {k:28s} {v:.2e}")
    if args.target == "trt":
        from letsplay.export.tensorrt import build_engine

        plan = build_engine(Path(args.out) / "performer.onnx", Path(args.out) / "trt", args.precision)
        print(f"TensorRT engine: {plan}")
    return 0


COMMANDS = [
    ("demo", "built-in music and the shipped performer: a window, or demo.mp4 without a display",
     _add_demo, _run_demo),
    ("live", "render a live input device (microphone) as it plays", _add_live, _run_live),
    ("render", "render an audio file to mp4 / keypoints as fast as possible", _add_render, _run_render),
    ("devices", "list audio input and output devices", _add_devices, _run_devices),
    ("export", "export a checkpoint to ONNX graphs (+ TensorRT engines)", _add_export, _run_export),
]
