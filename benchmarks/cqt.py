"""Streaming CQT vs recomputing the 87-column window with nnAudio, every 30-fps frame.

    python -m benchmarks.cqt [--json out.json] [--frames 300]

Both run in this one process, interleaved, so the ratio is robust to a noisy machine.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from letsplay.models.features import CQT, StreamingCQT
from letsplay.models.spec import AudioSpec, VideoSpec

from .common import machine, summary, write_json


def run(frames: int = 300, alignment: str = "causal", device: str = "cpu") -> dict:
    spec = AudioSpec(alignment=alignment)
    video = VideoSpec()
    from nnAudio.features.cqt import CQT1992v2

    nna = CQT1992v2(sr=spec.sample_rate, hop_length=spec.hop, fmin=spec.fmin, n_bins=spec.n_bins,
                    bins_per_octave=spec.bins_per_octave, center=False, verbose=False).to(device)
    stream = StreamingCQT(spec).to(device)
    ours = CQT(spec).to(device)
    # The window nnAudio needs for 87 columns without centring: (87-1)*hop + kernel width.
    win = (spec.window_columns - 1) * spec.hop + nna.kernel_width
    per_frame = spec.sample_rate / video.fps
    rng = np.random.default_rng(0)
    total = int(per_frame * (frames + 10)) + win
    audio = torch.tensor(rng.standard_normal(total).astype(np.float32) * 0.1, device=device)

    state = stream.init_state(1, device)
    # Warm the stream up past one window so every column has full history.
    _, state = stream.step(audio[None, :win], state)
    ends = [int(win + (i + 1) * per_frame) for i in range(frames)]
    t_stream, t_nna, t_ours, cols_per_frame = [], [], [], []
    # Alternate blocks of frames between the three methods: all are measured in this one
    # run (robust to a noisy machine), each with its own working set warm in cache.
    block = 10
    with torch.inference_mode():
        for b in range(0, frames, block):
            pos = ends[b - 1] if b else win
            for end in ends[b: b + block]:
                t0 = time.perf_counter()
                cols, state = stream.step(audio[None, pos:end], state)
                t_stream.append(time.perf_counter() - t0)
                cols_per_frame.append(cols.shape[-1])
                pos = end
            for end in ends[b: b + block]:
                t0 = time.perf_counter()
                nna(audio[None, end - win: end])
                t_nna.append(time.perf_counter() - t0)
            for end in ends[b: b + block]:
                t0 = time.perf_counter()
                ours(audio[None, end - win: end])
                t_ours.append(time.perf_counter() - t0)
    s, n, o = summary(t_stream), summary(t_nna), summary(t_ours)
    return {
        "benchmark": "cqt",
        "machine": machine(),
        "device": device,
        "spec": spec.to_dict(),
        "fps": video.fps,
        "frames": frames,
        "mean_new_columns_per_frame": float(np.mean(cols_per_frame)),
        "streaming_cqt_per_frame": s,
        "nnaudio_window_recompute_per_frame": n,
        "our_cqt_window_recompute_per_frame": o,
        "ratio_nnaudio_over_streaming": n["median_ms"] / s["median_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--alignment", choices=["causal", "centered"], default="causal")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args(argv)
    r = run(args.frames, args.alignment, args.device)
    print(write_json(r, args.json))
    print(f"\nstreaming {r['streaming_cqt_per_frame']['median_ms']:.3f} ms/frame, "
          f"nnAudio window recompute {r['nnaudio_window_recompute_per_frame']['median_ms']:.3f} ms/frame: "
          f"{r['ratio_nnaudio_over_streaming']:.1f}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
