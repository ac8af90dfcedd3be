"""Cost against frame size and against the number of streams, per backend, with plots.

    python -m benchmarks.scaling --json benchmarks/results/scaling_cpu.json
    python -m benchmarks.scaling --preset tiny --sizes 32 64 128 --streams 1 2 4 --json /tmp/scaling_tiny.json

Resolution: the preset rebuilt at each video size (``presets.preset(name,
video=VideoSpec(height=s, width=s))``; sizes the preset's strides do not allow are
listed with the reason), batch 1. Streams: the preset's own size, N streams stepped
together in one call. Each configuration measures its backends interleaved (as
``fps.py``: blocks of frames alternate), end to end (CQT + window + step), and gives
every fps as a fraction of the roof (``roof.py``). One PNG per backend is written next
to the JSON (``<json stem>_<backend>.png``): ms per frame against size, with the
roof's floor, and frames/s against streams, with the roof.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .common import machine, markdown_table, pyplot, set_threads, write_json
from .fps import build_backends, measure, measure_roofs, summarize
from .roof import frame_flops, roof

log = logging.getLogger(__name__)


def build(name: str, size: int | None, seed: int = 0):
    """The preset at ``size`` x ``size`` (None: its own size), checked with one step."""
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset
    from letsplay.models.spec import VideoSpec

    cfg = preset(name, video=None if size is None else VideoSpec(height=size, width=size))
    torch.manual_seed(seed)
    perf = Performer(cfg).eval()
    with torch.inference_mode():
        out, _ = perf.step(torch.zeros(1, cfg.audio.n_bins, cfg.audio.window_columns), perf.init_state(1))
    if tuple(out.frame.shape[-2:]) != (cfg.video.height, cfg.video.width):
        raise ValueError(f"the model makes {tuple(out.frame.shape[-2:])} frames, not {size}x{size}")
    return perf


def run(preset: str = "realtime", sizes: Sequence[int] = (64, 128, 256, 512), streams: Sequence[int] = (1, 2, 4, 8),
        backends: Sequence[str] = ("torch", "onnxruntime"), frames: int = 50, block: int = 10, warmup: int = 3,
        threads: int | None = None, gemm_n: int = 2048, gemm_repeats: int = 7, json_path: str | None = None,
        plot_dir: str | None = None, progress: bool = True, onnx_cache: str | None = None) -> dict:
    """Both sweeps; writes one PNG per backend (next to ``json_path``, else in ``plot_dir``
    or a temporary folder) and returns the JSON-able result. ``onnx_cache``: keep and
    reuse the ONNX exports there."""
    threads_used = set_threads(threads)
    roofs = measure_roofs(backends, gemm_n, gemm_repeats)
    tmp = Path(tempfile.mkdtemp(prefix="letsplay-scaling-"))
    cache = Path(onnx_cache) if onnx_cache else None
    unsupported: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    by_size: list[tuple] = []
    for s in sizes:
        try:
            perf = build(preset, s)
        except Exception as e:  # noqa: BLE001 - a size the strides do not allow is reported
            unsupported[str(s)] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            log.info("%s at %dx%d: %s", preset, s, s, unsupported[str(s)])
            continue
        flops = frame_flops(perf)
        entries, unav = build_backends(perf, backends, tmp / f"size{s}", threads_used, ort_stage_graphs=False,
                                       progress=progress, onnx_cache=cache)
        unavailable.update({f"{k} ({s}x{s})": v for k, v in unav.items()})
        ms, failed = measure(entries, perf.cfg, 1, frames, block, warmup, stages=False, progress=progress,
                             desc=f"{preset} {s}x{s}")
        unavailable.update({f"{k} ({s}x{s})": v for k, v in failed.items()})
        for e in entries:
            if e.name in ms:
                by_size.append((e, ms[e.name], 1, flops, {"size": s, "work_size": list(perf.cfg.work_size)}))
    by_streams: list[tuple] = []
    perf = build(preset, None)
    flops = frame_flops(perf)
    entries, unav = build_backends(perf, backends, tmp / "streams", threads_used, ort_stage_graphs=False,
                                   progress=progress, onnx_cache=cache)
    unavailable.update({f"{k} (streams)": v for k, v in unav.items()})
    for n in streams:
        ms, failed = measure(entries, perf.cfg, n, frames, block, warmup, stages=False, progress=progress,
                             desc=f"{preset} x{n}")
        unavailable.update({f"{k} ({n} streams)": v for k, v in failed.items()})
        for e in entries:
            if e.name in ms:
                by_streams.append((e, ms[e.name], n, flops, {"size": perf.cfg.video.height}))
    roofs = measure_roofs(backends, gemm_n, gemm_repeats, before=roofs)

    def done(e, ms, n, flops, extra) -> dict:
        r = summarize(e, ms, preset, n, flops, roofs)
        r.update(extra, gflops_per_frame=flops["total"] / 1e9,
                 roof_ms_per_frame=roof(flops, r["roof"]["gflops"])["ms_per_frame"])
        return r

    result = {
        "benchmark": "scaling",
        "machine": machine(),
        "threads": threads_used,
        "preset": preset,
        "settings": {"sizes": list(sizes), "streams": list(streams), "backends": list(backends), "frames": frames,
                     "block": block, "warmup": warmup},
        "roof": roofs,
        "resolution": [done(*m) for m in by_size],
        "streams": [done(*m) for m in by_streams],
        "unsupported_sizes": unsupported,
        "unavailable": unavailable,
    }
    if json_path:
        folder, stem = Path(json_path).parent, Path(json_path).stem
    else:
        folder, stem = Path(plot_dir or tempfile.mkdtemp(prefix="letsplay-scaling-plots-")), "scaling"
    result["plots"] = plot(result, folder, stem)
    return result


def plot(result: dict, folder: Path, stem: str) -> dict[str, str]:
    """One PNG per backend: ms/frame against size (with the roof's floor), fps against
    streams (with the roof). Returns backend -> path."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(r["backend"] for r in result["resolution"] + result["streams"]))
    paths = {}
    for b in names:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        rs = sorted((r for r in result["resolution"] if r["backend"] == b), key=lambda r: r["size"])
        if rs:
            x = [r["size"] for r in rs]
            med = [r["e2e_ms"]["median_ms"] for r in rs]
            p90 = [r["e2e_ms"]["p90_ms"] - r["e2e_ms"]["median_ms"] for r in rs]
            ax[0].errorbar(x, med, yerr=[[0] * len(p90), p90], marker="o", capsize=3, label="measured (median, p90)")
            ax[0].plot(x, [r["roof_ms_per_frame"] for r in rs], "k--", label="roof (GEMM rate)")
            ax[0].axhline(1000 / 30, color="r", lw=0.8, ls=":", label="33.3 ms (30 fps)")
            ax[0].set_xscale("log", base=2)
            ax[0].set_yscale("log")
            ax[0].set_xticks(x, [f"{s}" for s in x])
            ax[0].legend(fontsize=7)
        ax[0].set(xlabel="frame size (pixels, square)", ylabel="ms per frame (batch 1)", title=f"{b}: resolution")
        ss = sorted((r for r in result["streams"] if r["backend"] == b), key=lambda r: r["streams"])
        if ss:
            x = [r["streams"] for r in ss]
            ax[1].plot(x, [r["fps"] for r in ss], marker="o", label="frames/s, all streams")
            ax[1].plot(x, [r["roof"]["fps"] for r in ss], "k--", label="roof")
            ax[1].plot(x, [30 * n for n in x], "r:", lw=0.8, label="30 fps per stream")
            ax[1].set_xscale("log", base=2)
            ax[1].set_yscale("log")
            ax[1].set_xticks(x, [str(n) for n in x])
            ax[1].legend(fontsize=7)
        size = ss[0]["size"] if ss else "?"
        ax[1].set(xlabel="streams stepped together", ylabel="frames / s",
                  title=f"{b}: streams ({result['preset']}, {size}x{size})")
        fig.suptitle(f"letsplay {result['preset']} on {result['machine']['cpu']} ({result['threads']} threads)",
                     fontsize=9)
        fig.tight_layout()
        path = folder / f"{stem}_{b}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths[b] = str(path)
    return paths


def markdown(r: dict) -> str:
    rows = [[x["size"], x["backend"], x["device"], x["gflops_per_frame"], x["e2e_ms"]["median_ms"],
             x["e2e_ms"]["p90_ms"], x["fps"], f"{100 * x['fraction_of_roof']:.1f}%"] for x in r["resolution"]]
    rows2 = [[x["streams"], x["backend"], x["device"], x["e2e_ms"]["median_ms"], x["fps"], x["fps_per_stream"],
              f"{100 * x['fraction_of_roof']:.1f}%"] for x in r["streams"]]
    parts = [f"preset {r['preset']}; roof {r['roof']['cpu-fp32']['gflops']:.1f} GFLOP/s (CPU fp32 GEMM)", "",
             markdown_table(["size", "backend", "device", "GFLOP/frame", "e2e ms", "e2e p90", "fps", "of roof"], rows),
             "", markdown_table(["streams", "backend", "device", "e2e ms", "fps (all)", "fps/stream", "of roof"],
                                rows2)]
    if r["unsupported_sizes"]:
        parts += ["", "sizes not allowed:"] + [f"- {k}: {v}" for k, v in r["unsupported_sizes"].items()]
    if r["unavailable"]:
        parts += ["", "unavailable:"] + [f"- {k}: {v}" for k, v in r["unavailable"].items()]
    parts += ["", "plots: " + ", ".join(r["plots"].values())]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "realtime", "paper"], default="realtime")
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256, 512])
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--frames", type=int, default=50, help="frames timed per backend and config (default 50)")
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--json", default=None, help="write the result here; the PNGs go next to it")
    ap.add_argument("--plot-dir", default=None, help="where the PNGs go without --json")
    ap.add_argument("--onnx-cache", default=None, metavar="DIR", help="keep and reuse the ONNX exports in DIR")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = run(args.preset, args.sizes, args.streams, args.backends, args.frames, args.block, args.warmup,
            args.threads, args.gemm_n, json_path=args.json, plot_dir=args.plot_dir, onnx_cache=args.onnx_cache)
    write_json(r, args.json)
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
