"""How long after a note onset each octave of the CQT reflects it.

    python -m benchmarks.onset_latency [--json out.json]

For the top, middle and bottom octave, a tone at that octave's middle bin starts at a
known sample; the CQT (same kernels, a fine 8-sample hop) is read after the onset,
and we report when the bin first reaches 10%, 50% and 90% of its steady magnitude.
For ``causal`` that time is how late a live frame sees the note; for ``centered`` the
column reacts *before* its time (negative), but a stream can only compute it
``ahead`` samples later, which is added as ``available_ms``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import torch

from letsplay.models.features import CQT
from letsplay.models.spec import AudioSpec

from .common import machine, write_json

OCTAVES = {"top": 6, "middle": 3, "bottom": 0}


def measure(alignment: str = "causal", base: AudioSpec | None = None) -> dict:
    base = base or AudioSpec()
    spec = dataclasses.replace(base, alignment=alignment, hop=8)
    cqt = CQT(spec)
    sr = spec.sample_rate
    out = {}
    for name, octave in OCTAVES.items():
        k = octave * spec.bins_per_octave + spec.bins_per_octave // 2
        f = spec.fmin * 2 ** (k / spec.bins_per_octave)
        onset = cqt.back + cqt.ahead + sr // 10  # sample index of the onset, full history before
        n = onset + cqt.back + cqt.ahead + sr // 10
        t = np.arange(n) / sr
        x = np.where(np.arange(n) >= onset, 0.5 * np.sin(2 * np.pi * f * (t - onset / sr)), 0.0)
        with torch.inference_mode():
            mag = cqt(torch.tensor(x, dtype=torch.float32))[k].numpy()
        times = np.arange(len(mag)) * spec.hop  # column j at sample j*hop
        steady = mag[-1]
        res = {"bin": k, "freq_hz": round(f, 2)}
        for frac in (0.1, 0.5, 0.9):
            j = int(np.argmax(mag >= frac * steady))
            res[f"ms_to_{int(frac * 100)}pct"] = round((times[j] - onset) / sr * 1000, 2)
        res["available_ms"] = round(res["ms_to_50pct"] + cqt.ahead / sr * 1000, 2)
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    r = {"benchmark": "onset_latency", "machine": machine(),
         "causal": measure("causal"), "centered": measure("centered")}
    print(write_json(r, args.json))
    for al in ("causal", "centered"):
        for name, v in r[al].items():
            print(f"{al:9s} {name:7s} {v['freq_hz']:8.1f} Hz: 10% {v['ms_to_10pct']:7.1f} ms, "
                  f"50% {v['ms_to_50pct']:7.1f} ms, 90% {v['ms_to_90pct']:7.1f} ms; "
                  f"a stream has the 50% column after {v['available_ms']:.1f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
