"""`letsplay cqt`, `letsplay version` and `letsplay devices`: the audio front end from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_cqt(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="an audio file (wav, flac, ogg, mp3, ...)")
    p.add_argument("-o", "--out", required=True, help="output .npz (cqt [84, T], column times, spec)")
    p.add_argument("--alignment", choices=["causal", "centered"], default="causal",
                   help="column alignment (default: causal)")
    p.add_argument("--scaling", choices=["magnitude", "log"], default="magnitude")


def _run_cqt(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from letsplay.models.audio import audio_info, stream_audio
    from letsplay.models.features import StreamingCQT
    from letsplay.models.spec import AudioSpec

    spec = AudioSpec(alignment=args.alignment, scaling=args.scaling)
    info = audio_info(args.audio)
    out = Path(args.out)
    if not out.parent.exists():
        raise OSError(f"output folder {out.parent} does not exist; create it first")
    cqt = StreamingCQT(spec)
    state = cqt.init_state(1)
    cols = []
    with torch.inference_mode(), tqdm(total=round(info["seconds"], 2), unit="s", desc="cqt",
                                      disable=not sys.stderr.isatty()) as bar:
        for block in stream_audio(args.audio, spec.sample_rate):
            c, state = cqt.step(torch.from_numpy(block)[None], state)
            cols.append(c[0].numpy())
            bar.update(round(len(block) / spec.sample_rate, 2))
    y = np.concatenate(cols, axis=1)
    times = np.arange(y.shape[1]) * spec.hop / spec.sample_rate
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, cqt=y, times=times, spec=np.array(spec.to_json()))
    tmp.replace(out)
    print(f"{args.audio}: {info['seconds']:.2f} s -> CQT {y.shape[0]} bins x {y.shape[1]} columns "
          f"({spec.alignment}) written to {out}")
    return 0


def _add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_version(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    def v(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import torch

    info = {
        "letsplay": v("letsplay"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "onnxruntime": v("onnxruntime") or v("onnxruntime-gpu"),
        "tensorrt": v("tensorrt"),
        "nnaudio": v("nnaudio"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, val in info.items():
            print(f"{k:12s} {val or '-'}")
    return 0


def _add_devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print a JSON object instead: \"portaudio\", the devices --device takes (index, name, "
                        "inputs, outputs, default_rate, hostapi), and \"pulse_sources\", the PulseAudio / "
                        "PipeWire capture sources PULSE_SOURCE takes (index, name, driver, spec, state, monitor)")


def _run_devices(args: argparse.Namespace) -> int:
    from letsplay.realtime.sources import list_devices, pulse_sources

    devs = list_devices()
    pulse = pulse_sources()
    if args.json:
        print(json.dumps({"portaudio": devs, "pulse_sources": pulse}, indent=2))
        return 0
    if devs:
        print("audio devices (letsplay live --device INDEX, or a unique part of the name):")
        for d in devs:
            print(f"{d['index']:3d}  {d['name']:40s} in {d['inputs']:2d}  out {d['outputs']:2d}  "
                  f"{d['default_rate']:.0f} Hz  ({d['hostapi']})")
    else:
        print("no audio devices (is PulseAudio / PipeWire running?)")
    if pulse:
        print("\nPulseAudio / PipeWire sources (capture one with: PULSE_SOURCE=NAME letsplay live --device pulse):")
        for s in pulse:
            what = "monitor of an output" if s["monitor"] else "input"
            print(f"  {s['name']:48s} {s['spec']:24s} {s['state']:10s} ({what})")
    return 0


COMMANDS = [
    ("cqt", "compute the CQT features of an audio file (streamed; any length)", _add_cqt, _run_cqt),
    ("version", "versions of letsplay and its backends", _add_version, _run_version),
    ("devices", "list audio input and output devices, and PulseAudio / PipeWire sources", _add_devices,
     _run_devices),
]
