"""`letsplay render | live | demo | devices | export`: the engine from the command line.

Every running command takes ``--backend auto|torch|onnxruntime|tensorrt`` and
``--performer NAME|PATH`` and prints which backend and device actually ran;
``--precision int8|fp16`` runs a reduced-precision variant of an exported folder
(onnxruntime; made by ``letsplay export onnx ... --int8 --fp16``); ``--cuda-graph``
(with ``--backend torch --compute cuda``) replays the step as a captured CUDA graph.
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
    p.add_argument("--cuda-graph", action="store_true",
                   help="--backend torch --compute cuda only: capture the model's step into a CUDA graph and "
                        "replay it (one launch per frame instead of one per kernel)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="accept an onnxruntime provider other than the one asked for (warns)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (onnxruntime)")
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32",
                   help="onnxruntime only: run this variant of an exported folder (--performer DIR; "
                        "made by `letsplay export onnx --int8/--fp16`)")
    p.add_argument("--pipeline", choices=["auto", "on", "off"], default="auto",
                   help="run each frame as two halves on two threads (front: keypoints, coarse frame, UNet "
                        "encoder + GRU; back: GCN, decoder, sinks) -- more frames per second on few cores for "
                        "about half a step more latency; auto: on for onnxruntime on a CPU of <= 2 cores")
    p.add_argument("--lookahead", type=float, default=None, metavar="MS",
                   help="give the model MS of future audio; display is delayed as much")
    p.add_argument("--keypoints", default=None, metavar="NPZ", help="write per-frame keypoints to this .npz")
    p.add_argument("--osc", default=None, metavar="HOST:PORT",
                   help="send keypoints as OSC over UDP (one /letsplay/frame message per frame)")
    p.add_argument("--stats", default=None, metavar="JSON", help="write the run's statistics here")


def _open(args: argparse.Namespace):
    import dataclasses

    from letsplay.realtime.backends import describe
    from letsplay.realtime.performers import open_backend, resolve_performer

    ref = resolve_performer(args.performer, args.instrument)
    backend = open_backend(ref, args.backend, args.compute, args.allow_fallback, args.threads, args.precision,
                           cuda_graph=args.cuda_graph, pipeline={"auto": None, "on": True, "off": False}[args.pipeline])
    if getattr(backend, "pipeline", False) and not args.threads:
        import torch

        torch.set_num_threads(1)  # one core per half; the CQT's torch ops must not spin on the other
    audio, video = _specs(backend)
    if args.lookahead is not None:
        video = dataclasses.replace(video, lookahead_ms=float(args.lookahead))
    print(f"performer {ref.name} ({ref.path}); backend {describe(backend)}", file=sys.stderr)
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
    eng.start()  # on its own thread: Ctrl-C lands here, never inside an encoder call
    try:
        while eng.running:  # sleep, not join: a join interrupted by Ctrl-C upsets the interpreter's exit
            time.sleep(0.1)
    finally:
        eng.stop()  # (on Ctrl-C too) the loop ends between frames and the recording is finalised
        bar.close()
    if eng.error is not None:
        raise eng.error
    stats = eng.stats_dict()
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
    q = p.add_argument_group("reduced-precision variants of performer.onnx for CPU onnxruntime "
                             "(run one with --precision int8|fp16)")
    q.add_argument("--int8", action="store_true",
                   help="static int8 (QDQ) quantization, calibrated on the demo music stepped through the fp32 graph")
    q.add_argument("--fp16", action="store_true", help="float16 weights and activations (float32 I/O)")
    q.add_argument("--calib-frames", type=int, default=300, metavar="N", help="int8 calibration frames (default 300)")
    q.add_argument("--eval-frames", type=int, default=300, metavar="N",
                   help="frames the variants are measured on against fp32, free-running (default 300)")
    q.add_argument("--min-psnr", type=float, default=30.0, metavar="DB",
                   help="record a variant only if its frames are at least this close to fp32 (default 30 dB; 0: any)")
    q.add_argument("--threads", type=int, default=None,
                   help="onnxruntime threads while measuring the variants (default: onnxruntime's)")


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
    if (args.int8 or args.fp16) and min(args.calib_frames, args.eval_frames) < 1:
        raise ValueError("--calib-frames and --eval-frames must be at least 1")
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
    rc = 0
    if args.int8 or args.fp16:
        rc = _export_variants(args, model)
    if args.target == "trt":
        from letsplay.export.onnx import read_manifest
        from letsplay.export.tensorrt import build_engine, engine_graph

        graph, typed = engine_graph(read_manifest(args.out), args.precision)  # TensorRT 11 fp16: the fp16 variant
        plan = build_engine(graph, Path(args.out) / "trt", args.precision, strongly_typed=typed)
        print(f"TensorRT engine: {plan}")
    return rc


def _export_variants(args: argparse.Namespace, model) -> int:
    """--int8 / --fp16: make, measure and record the variants; print the report. Exit
    status 1 when a variant was refused for its quality."""
    from tqdm import tqdm

    from letsplay.export.quantize import add_variants, windows_from_audio
    from letsplay.realtime.demo import demo_audio

    cfg = model.cfg
    n_calib = args.calib_frames if args.int8 else 0
    need = n_calib + args.eval_frames
    x = demo_audio(cfg.instrument, cfg.audio.sample_rate)
    windows = windows_from_audio(x[: int((need / cfg.video.fps + 1.0) * cfg.audio.sample_rate)], cfg.audio,
                                 cfg.video, need)
    calib = windows[:n_calib]
    rest = windows[n_calib:]
    held_out = len(rest) >= args.eval_frames
    evals = rest[: args.eval_frames] if held_out else windows[: args.eval_frames]
    precisions = [p for p, on in (("int8", args.int8), ("fp16", args.fp16)) if on]
    bar = tqdm(total=len(precisions) * 2 + args.int8, unit="step", desc="variants")
    reports = add_variants(args.out, calib, evals, precisions, min_psnr=args.min_psnr or None,
                           threads=args.threads, source=f"demo music ({cfg.instrument})",
                           progress=lambda s: (bar.set_postfix_str(s.split(":")[0]), bar.update(1)))
    bar.close()
    where = ("from the start" if not n_calib else "frames after the calibration ones" if held_out
             else "overlapping the calibration frames: the demo is shorter than both")
    print(f"variants vs fp32: {len(evals)} stepped frames of the demo music ({where}), each graph carrying its "
          f"own state; threads {args.threads or 'onnxruntime default'}")
    rc = 0
    for p, r in reports.items():
        ms = r["step_ms"]
        print(f"  {p}: PSNR {r['psnr_db']:.1f} dB (worst frame {r['psnr_min_db']:.1f}, one step from the fp32 "
              f"state {r['psnr_step_db']:.1f})", end="")
        if r["keypoints_max_abs"] is not None:
            print(f"; keypoints abs diff max {r['keypoints_max_abs']:.2e} mean {r['keypoints_mean_abs']:.2e}", end="")
        print(f"; median step {ms['variant']:.2f} ms vs fp32 {ms['fp32']:.2f} ms ({r['speedup']:.2f}x)")
        if r["speedup"] is not None and r["speedup"] < 1.0:
            print(f"    note: {p} is slower than fp32 on this machine"
                  + (" (int8 kernels pay off on CPUs with VNNI)" if p == "int8" else
                     " (CPU onnxruntime has few float16 kernels: it computes in fp32 with casts)")
                  + "; fp32 stays the faster choice here")
        if r["recorded"]:
            print(f"    wrote {Path(args.out) / r['file']} (run it: --performer {args.out} --backend onnxruntime "
                  f"--precision {p})")
        else:
            print(f"    NOT recorded: {r['psnr_db']:.1f} dB is under --min-psnr {args.min_psnr:g} dB "
                  f"(pass --min-psnr 0 to keep it anyway)", file=sys.stderr)
            rc = 1
    return rc


COMMANDS = [
    ("demo", "built-in music and the shipped performer: a window, or demo.mp4 without a display",
     _add_demo, _run_demo),
    ("live", "render a live input device (microphone) as it plays", _add_live, _run_live),
    ("render", "render an audio file to mp4 / keypoints as fast as possible", _add_render, _run_render),
    ("devices", "list audio input and output devices", _add_devices, _run_devices),
    ("export", "export a checkpoint to ONNX graphs (+ TensorRT engines)", _add_export, _run_export),
]
