"""Frames per second and per-stage milliseconds of every backend really available here.

    python -m benchmarks.fps --json benchmarks/results/fps_cpu.json
    python -m benchmarks.fps --paper --streams 1 4 --frames 300 --json benchmarks/results/fps_cpu_paper.json
    python -m benchmarks.fps --presets realtime --backends torch onnxruntime --threads 2 --frames 100

What one frame costs, end to end as the engine runs it: the streaming CQT of that
frame's new audio (each stream), the window, and the backend's ``step`` on the flat
names (numpy in, numpy out, state fed back) -- for batch 1 and for N streams stepped
together (``--streams 1 4``: one call renders N streams' frames). ``fps`` counts every
stream's frames. Per stage (KHP, CVG, STU) each backend runs its stages alone: torch the
modules' ``step``, onnxruntime the exported per-stage graphs (``khp.onnx`` ...).

Backends: ``torch`` (eager fp32, CPU), ``torch-compiled`` (``torch.compile`` of the
step; skipped with the reason when it fails), ``onnxruntime`` (the exported *fused*
graph, CPU provider); on a GPU machine also ``torch-cuda`` / ``torch-cuda-fp16``,
``onnxruntime-cuda``, ``onnxruntime-tensorrt`` (TensorRT EP) and native TensorRT
``tensorrt-fp16`` / ``tensorrt-fp32``. Each one that cannot run here is listed as
"unavailable" with the reason.

All backends are measured in this one run, **interleaved**: blocks of ``--block``
frames alternate between backends (the starting backend rotates), so the ratios hold on
a noisy, shared machine. Medians and p90 are reported. Every fps is also a fraction
of this machine's roof (``benchmarks/roof.py``: fp32 GEMM rate / FLOPs per frame).

Also in the run:

* the export's worth: torch eager fp32 step time / onnxruntime fused step time (the
  speedup of the exported graph; the target is 1.5x for the realtime preset), and every
  backend's speedup over torch eager;
* a baseline: the pipeline a peer would write -- recompute the whole 87-column window
  every frame with nnAudio's ``CQT1992v2`` + torch eager fp32 ``Performer.step`` --
  against ours (StreamingCQT, new columns only + the fastest backend), per frame, batch 1.

The models are randomly initialised presets (the cost does not depend on the weights),
and any ``--checkpoints`` (a warp performer's cost depends on its reference: the part of
the frame its parts can reach is computed, the rest is the plate).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from letsplay.models import stepping

from .common import dist, machine, markdown_table, progress_bar, set_threads, streaming_cqt, write_json
from .roof import fraction, frame_flops, gemm_gflops, roof

log = logging.getLogger(__name__)

STAGES = ("khp", "cvg", "warp", "stu")

BACKENDS: dict[str, str] = {  # name -> what it is
    "torch": "torch eager fp32, CPU",
    "torch-compiled": "torch.compile of the Performer step, fp32, CPU",
    "torch-cuda": "torch eager fp32, CUDA",
    "torch-cuda-fp16": "torch eager fp16, CUDA",
    "onnxruntime": "onnxruntime, fused graph, CPUExecutionProvider",
    "onnxruntime-cuda": "onnxruntime, fused graph, CUDAExecutionProvider",
    "onnxruntime-tensorrt": "onnxruntime, fused graph, TensorrtExecutionProvider",
    "tensorrt-fp16": "native TensorRT engine, fp16",
    "tensorrt-fp32": "native TensorRT engine, fp32",
}
DEFAULT_BACKENDS = tuple(BACKENDS)
ROOF_KEY = {"torch": "cpu-fp32", "torch-compiled": "cpu-fp32", "onnxruntime": "cpu-fp32",
            "torch-cuda": "cuda-fp32", "onnxruntime-cuda": "cuda-fp32", "onnxruntime-tensorrt": "cuda-fp32",
            "tensorrt-fp32": "cuda-fp32", "torch-cuda-fp16": "cuda-fp16", "tensorrt-fp16": "cuda-fp16"}


# --------------------------------------------------------------------------- backends


@dataclass
class Entry:
    """One backend ready to measure."""

    name: str  # a key of BACKENDS
    backend: Any  # letsplay.realtime.backends.Backend
    stages: Callable[[int], dict[str, Callable[[], None]]] | None = None  # batch -> one call per stage
    stages_note: str | None = None  # why there are no per-stage numbers
    setup_s: float = 0.0  # export / compile / engine build seconds
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return str(self.backend.device)


def _sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def torch_stage_calls(model, batch: int) -> dict[str, Callable[[], None]]:
    """One call per stage of a torch Performer (state carried), on its device and dtype.
    The STU call includes CVG's upsampling to the working size, as ``stu.onnx`` does."""
    import torch.nn.functional as F

    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    sync = _sync_for(dev)
    cfg = model.cfg
    g = torch.Generator(device="cpu").manual_seed(0)
    window = torch.rand(batch, cfg.audio.n_bins, cfg.audio.window_columns, generator=g).to(dev, dt)
    with torch.inference_mode():
        st = model.state_from_dict({k: v.to(dt) for k, v in model.init_state(batch, dev).to_dict().items()})
        out, _ = model.step(window, st)
    states = {"khp": st.khp, "cvg": st.cvg, "stu": st.stu}
    kp, hm, coarse = out.keypoints, out.heatmap, out.coarse
    calls: dict[str, Callable[[], None]] = {}

    def khp() -> None:
        with torch.inference_mode():
            _, states["khp"] = model.khp.step(window, states["khp"])
        sync()

    def cvg() -> None:
        with torch.inference_mode():
            _, states["cvg"] = model.cvg.step(window, states["cvg"])
        sync()

    def warp() -> None:
        with torch.inference_mode():
            model.coarse_of(kp)
        sync()

    def stu() -> None:
        with torch.inference_mode():
            c = coarse
            if c is not None and not cfg.stu.residual and tuple(c.shape[-2:]) != tuple(cfg.work_size):
                c = F.interpolate(c, size=cfg.work_size, mode="bilinear", align_corners=False)
            _, states["stu"] = model.stu.step(c, hm, kp, window, states["stu"])
        sync()

    if model.khp is not None:
        calls["khp"] = khp
    if model.cvg is not None:
        calls["cvg"] = cvg
    if model.warp is not None:
        calls["warp"] = warp
    calls["stu"] = stu
    return calls


def ort_session(path: Path, provider: str, threads: int | None):
    """An onnxruntime session set up as ``OrtBackend`` does (:func:`letsplay.export.runtime.ort_session`);
    raises when the provider that really runs is not the one asked for."""
    from letsplay.export.runtime import ort_provider
    from letsplay.export.runtime import ort_session as make_session
    from letsplay.realtime.backends import BackendError

    want = ort_provider(provider)
    sess = make_session(path, want, threads)
    if sess.get_providers()[0] != want:
        raise BackendError(f"{path.name}: onnxruntime runs {sess.get_providers()[0]}, not {want}")
    return sess


def ort_stage_calls(folder: Path, provider: str, threads: int | None) -> Callable[[int], dict[str, Callable[[], None]]]:
    """Per-stage calls of an exported folder's ``khp/cvg/stu.onnx`` (sessions made once)."""
    from letsplay.export.onnx import read_manifest

    man = read_manifest(folder)
    sessions = {n: ort_session(man.graph_path(n), provider, threads) for n in STAGES if n in man.data["graphs"]}

    def make(batch: int) -> dict[str, Callable[[], None]]:
        rng = np.random.default_rng(0)
        calls = {}
        for name, sess in sessions.items():
            g = man.data["graphs"][name]
            feeds = {}
            for d in g["inputs"]:
                shape = (batch, *d["shape"][1:])
                zero = d["name"].startswith(stepping.STATE_IN) or d["name"] == "z"
                feeds[d["name"]] = np.zeros(shape, np.float32) if zero else rng.random(shape, dtype=np.float32)
            outs = [o["name"] for o in g["outputs"]]

            def call(sess=sess, feeds=feeds, outs=outs) -> None:
                out = dict(zip(outs, sess.run(outs, feeds), strict=True))
                feeds.update(stepping.feeds({}, stepping.next_state(out)))

            calls[name] = call
        return calls

    return make


def _window_feeds(backend, batch: int, cfg) -> dict[str, np.ndarray]:
    w = np.random.default_rng(0).random((batch, cfg.audio.n_bins, cfg.audio.window_columns), dtype=np.float32)
    return stepping.feeds({"window": w}, backend.init_state(batch))


def weights_sha256(perf) -> str:
    """SHA-256 of a Performer's config and tensors (keys a cached export)."""
    import hashlib

    h = hashlib.sha256(perf.cfg.to_json().encode())
    for k, v in sorted(perf.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_folder(perf, workdir: Path, stages: bool, cache: Path | None = None) -> tuple[Path, float]:
    """Export the fused graph (and the per-stage graphs when ``stages``) to ``workdir``,
    or reuse an export of the same weights in ``cache``; (folder, seconds spent)."""
    from letsplay.export.onnx import ManifestError, export_onnx, read_manifest

    t0 = time.perf_counter()
    if cache is None:
        folder, digest = workdir / "onnx", None
    else:
        digest = weights_sha256(perf)
        folder = Path(cache) / f"{perf.cfg.preset}-{digest[:16]}{'-stages' if stages else ''}"
        try:
            read_manifest(folder, checkpoint_sha256=digest)
            return folder, time.perf_counter() - t0
        except ManifestError:
            pass
    log.info("exporting %s to ONNX in %s", perf.cfg.preset, folder)
    export_onnx(copy.deepcopy(perf).eval().to("cpu"), folder, checkpoint_sha256=digest, stages=stages, cqt=False)
    return folder, time.perf_counter() - t0


def build_backends(perf, names: Sequence[str], workdir: Path, threads: int | None = None,
                   ort_stage_graphs: bool = True, progress: bool = True, onnx_cache: Path | None = None,
                   ) -> tuple[list[Entry], dict[str, str]]:
    """The asked backends that really run here, and the reason for each one that does not.
    ``onnx_cache``: reuse (or keep) the ONNX export there instead of a fresh one in ``workdir``."""
    from letsplay.realtime.backends import BackendOptions, open_backend

    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    entries: list[Entry] = []
    unavailable: dict[str, str] = {}
    cpu = copy.deepcopy(perf).eval().to("cpu")
    folder: Path | None = None
    export_s = 0.0
    cuda = torch.cuda.is_available()
    for name in names:
        t0 = time.perf_counter()
        try:
            if name == "torch":
                be = open_backend(copy.deepcopy(cpu), BackendOptions(backend="torch", compute="cpu"))
                entries.append(Entry(name, be, lambda b, m=be.model: torch_stage_calls(m, b)))
            elif name == "torch-compiled":
                entries.append(_compiled(cpu, progress))
            elif name in ("torch-cuda", "torch-cuda-fp16"):
                if not cuda:
                    raise RuntimeError("torch sees no CUDA GPU (a CPU build of torch, or no GPU)")
                be = open_backend(copy.deepcopy(cpu), BackendOptions(
                    backend="torch", compute="cuda", torch_dtype="fp16" if name.endswith("fp16") else "fp32"))
                entries.append(Entry(name, be, lambda b, m=be.model: torch_stage_calls(m, b)))
            else:
                if folder is None:
                    folder, export_s = export_folder(cpu, workdir, ort_stage_graphs, onnx_cache)
                    t0 = time.perf_counter()
                if name.startswith("onnxruntime"):
                    provider = {"onnxruntime": "cpu", "onnxruntime-cuda": "cuda",
                                "onnxruntime-tensorrt": "tensorrt"}[name]
                    be = open_backend(folder, BackendOptions(backend="onnxruntime", compute=provider,
                                                             threads=threads if provider == "cpu" else None))
                    e = Entry(name, be)
                    if ort_stage_graphs:
                        e.stages = ort_stage_calls(folder, provider, threads if provider == "cpu" else None)
                    else:
                        e.stages_note = "per-stage graphs not exported in this run"
                    e.notes.append(f"export {export_s:.1f} s")
                else:  # native TensorRT
                    be = open_backend(folder, BackendOptions(backend="tensorrt", trt_precision=name.split("-")[1]))
                    e = Entry(name, be, stages_note="native TensorRT runs the fused engine only")
                entries.append(e)
            entries[-1].setup_s = entries[-1].setup_s or time.perf_counter() - t0
            log.info("%s: %s", name, entries[-1].device)
        except Exception as ex:  # noqa: BLE001 - every reason a backend cannot run is reported
            reason = f"{type(ex).__name__}: {str(ex).strip().splitlines()[0][:300] if str(ex).strip() else ''}"
            unavailable[name] = reason
            log.info("%s unavailable: %s", name, reason)
    return entries, unavailable


def _compiled(cpu, progress: bool) -> Entry:
    """torch.compile of the Performer's step behind TorchBackend; compiled (and checked
    against eager) here, so a failure is reported as the reason it is unavailable."""
    from letsplay.realtime.backends import BackendOptions, open_backend

    on_cpu = BackendOptions(backend="torch", compute="cpu")
    model = copy.deepcopy(cpu)
    eager = copy.deepcopy(cpu)
    model.step = torch.compile(model.step)  # an instance attribute: TorchBackend calls it
    be = open_backend(model, on_cpu)
    feeds = _window_feeds(be, 1, cpu.cfg)
    t0 = time.perf_counter()
    if progress:
        log.warning("compiling the %s step with torch.compile (once; this can take minutes)", cpu.cfg.preset)
    out = be.step(feeds)
    compile_s = time.perf_counter() - t0
    ref = open_backend(eager, on_cpu).step(feeds)
    err = float(np.abs(out["frame"] - ref["frame"]).max())
    if not err < 1e-3:
        raise RuntimeError(f"compiled step differs from eager by {err:.3g}")
    e = Entry("torch-compiled", be, stages_note="one compiled graph (see torch for the split)")
    e.setup_s = compile_s
    e.notes.append(f"compile {compile_s:.1f} s, max |frame - eager| {err:.2g}")
    return e


# --------------------------------------------------------------------------- the frame loop


class FrameLoop:
    """One backend streaming N streams: each frame's new audio -> StreamingCQT (per
    stream, as the engine does) -> the 87-column windows -> ``backend.step`` -> state."""

    def __init__(self, backend, audio, video, streams: int, seconds: float = 10.0, seed: int = 0) -> None:
        self.backend = backend
        self.cqt = streaming_cqt(audio)
        self.per = audio.sample_rate / video.fps
        rng = np.random.default_rng(seed)
        n = int(seconds * audio.sample_rate)
        self.audio = torch.from_numpy((rng.standard_normal((streams, n)) * 0.1).astype(np.float32))
        self.n_frames = int(n / self.per) - 1
        self.W = audio.window_columns
        self.i = 0
        with torch.inference_mode():
            self.cst = [self.cqt.init_state(1) for _ in range(streams)]
            self.win = [torch.zeros(audio.n_bins, self.W) for _ in range(streams)]
        self.state = backend.init_state(streams)  # flat names

    def frame(self) -> tuple[float, float, float]:
        """One frame for every stream; (cqt, step, end-to-end) seconds."""
        j = self.i % self.n_frames
        lo, hi = int(j * self.per), int((j + 1) * self.per)
        self.i += 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s, st in enumerate(self.cst):
                cols, self.cst[s] = self.cqt.step(self.audio[s: s + 1, lo:hi], st)
                k = cols.shape[-1]
                if k:
                    self.win[s] = torch.cat([self.win[s][:, k:], cols[0]], dim=-1)
            window = torch.stack(self.win).numpy()
        t1 = time.perf_counter()
        out = self.backend.step(stepping.feeds({"window": window}, self.state))
        self.state = stepping.next_state(out, self.state)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, t2 - t0


def measure(entries: Sequence[Entry], cfg, streams: int, frames: int, block: int = 10, warmup: int = 5,
            stages: bool = True, progress: bool = True, desc: str = "") -> tuple[dict[str, dict], dict[str, str]]:
    """Interleaved timings (ms lists) of every entry at ``streams`` streams."""
    loops: dict[str, FrameLoop] = {}
    calls: dict[str, dict[str, Callable[[], None]]] = {}
    failed: dict[str, str] = {}
    for e in entries:
        try:
            loop = FrameLoop(e.backend, cfg.audio, cfg.video, streams)
            for _ in range(warmup):
                loop.frame()
            c = e.stages(streams) if (stages and e.stages is not None) else {}
            for fn in c.values():
                for _ in range(max(1, warmup // 2)):
                    fn()
            loops[e.name], calls[e.name] = loop, c
        except Exception as ex:  # noqa: BLE001 - one backend failing at this batch is reported
            failed[e.name] = f"{type(ex).__name__}: {str(ex).strip()[:300]}"
            log.warning("%s failed at %d streams: %s", e.name, streams, failed[e.name])
    names = list(loops)
    ms: dict[str, dict] = {n: {"cqt": [], "step": [], "e2e": [], "stages": {k: [] for k in calls[n]}} for n in names}
    rounds = math.ceil(frames / block)
    bar = progress_bar(rounds * len(names), desc or "fps", enabled=progress)
    for b in range(rounds):
        n_here = min(block, frames - b * block)
        k = b % max(1, len(names))
        for name in names[k:] + names[:k]:  # rotate who goes first
            r = ms[name]
            for _ in range(n_here):
                c, s, t = loops[name].frame()
                r["cqt"].append(c * 1000)
                r["step"].append(s * 1000)
                r["e2e"].append(t * 1000)
            for stage, fn in calls[name].items():
                for _ in range(n_here):
                    t0 = time.perf_counter()
                    fn()
                    r["stages"][stage].append((time.perf_counter() - t0) * 1000)
            bar.update(1)
    bar.close()
    return ms, failed


# --------------------------------------------------------------------------- baseline


def baseline(cpu_model, entry: Entry, frames: int, block: int = 10, warmup: int = 5,
             progress: bool = True) -> dict:
    """The naive per-frame pipeline (nnAudio CQT1992v2 over the whole 87-column window +
    torch eager fp32 step) against ours (StreamingCQT new columns + ``entry``), batch 1,
    interleaved."""
    from nnAudio.features.cqt import CQT1992v2
    cfg = cpu_model.cfg
    spec = cfg.audio
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = _sync_for(dev)
    model = copy.deepcopy(cpu_model).eval().to(dev)
    nna = CQT1992v2(sr=spec.sample_rate, hop_length=spec.hop, fmin=spec.fmin, n_bins=spec.n_bins,
                    bins_per_octave=spec.bins_per_octave, center=False, verbose=False).to(dev)
    win = (spec.window_columns - 1) * spec.hop + nna.kernel_width  # samples for 87 columns
    per = spec.sample_rate / cfg.video.fps
    rng = np.random.default_rng(1)
    audio = torch.from_numpy((rng.standard_normal(win + int(per * 400)) * 0.1).astype(np.float32)).to(dev)
    n_frames = 399
    state = {"st": model.init_state(1, dev), "i": 0}

    def naive() -> tuple[float, float]:
        end = win + int((state["i"] % n_frames + 1) * per)
        state["i"] += 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            w = nna(audio[None, end - win: end])  # [1, n_bins, 87]
            sync()
            t1 = time.perf_counter()
            out, state["st"] = model.step(w, state["st"])
            out.frame.cpu()
        return t1 - t0, time.perf_counter() - t0

    with torch.inference_mode():
        cols = nna(audio[None, :win]).shape[-1]
    if cols != spec.window_columns:
        raise RuntimeError(f"nnAudio gave {cols} columns for the window, expected {spec.window_columns}")
    ours = FrameLoop(entry.backend, cfg.audio, cfg.video, 1, seed=1)
    for _ in range(warmup):
        naive()
        ours.frame()
    t_naive, t_naive_cqt, t_ours, t_ours_cqt = [], [], [], []
    rounds = math.ceil(frames / block)
    bar = progress_bar(rounds, f"baseline {cfg.preset}", enabled=progress)
    for b in range(rounds):
        bar.update(1)
        n_here = min(block, frames - b * block)
        for _ in range(n_here):
            c, t = naive()
            t_naive_cqt.append(c * 1000)
            t_naive.append(t * 1000)
        for _ in range(n_here):
            c, _, t = ours.frame()
            t_ours_cqt.append(c * 1000)
            t_ours.append(t * 1000)
    bar.close()
    n, o = dist(t_naive), dist(t_ours)
    return {
        "preset": cfg.preset,
        "naive": {"what": f"nnAudio CQT1992v2 over the {spec.window_columns}-column window + torch eager fp32 "
                          f"Performer.step on {dev}", "e2e": n, "cqt": dist(t_naive_cqt)},
        "ours": {"what": f"StreamingCQT (new columns only) + {entry.name} on {entry.device}", "backend": entry.name,
                 "device": entry.device, "e2e": o, "cqt": dist(t_ours_cqt)},
        "speedup": n["median_ms"] / o["median_ms"],
        "cqt_speedup": dist(t_naive_cqt)["median_ms"] / dist(t_ours_cqt)["median_ms"],
    }


# --------------------------------------------------------------------------- the run


def summarize(entry: Entry, ms: dict, preset: str, streams: int, flops: dict[str, float],
              roofs: dict[str, dict]) -> dict:
    e2e, step = dist(ms["e2e"]), dist(ms["step"])
    fps = streams * 1000.0 / e2e["median_ms"]
    rk = ROOF_KEY[entry.name]
    rf = roof(flops, roofs[rk]["gflops"])
    stages = {k: dist(v) for k, v in ms["stages"].items() if v} or None
    return {
        "preset": preset,
        "streams": streams,
        "backend": entry.name,
        "what": BACKENDS[entry.name],
        "device": entry.device,
        "threads": torch.get_num_threads() if rk.startswith("cpu") else None,
        "fps": fps,  # every stream's frames per second, from the median end-to-end frame time
        "fps_at_p90": streams * 1000.0 / e2e["p90_ms"],
        "fps_per_stream": 1000.0 / e2e["median_ms"],
        "e2e_ms": e2e,  # all streams' CQT + window + backend step
        "step_ms": step,  # backend step alone (all streams in one call)
        "cqt_ms": dist(ms["cqt"]),  # all streams' new CQT columns for this frame
        "stages_ms": stages,
        "stages_note": entry.stages_note if stages is None else None,
        "roof": {"key": rk, "gflops": roofs[rk]["gflops"], "fps": rf["fps"]},
        "fraction_of_roof": fraction(fps, rf["fps"]),
        "stages_fraction_of_roof": (None if stages is None else
                                    {k: streams * rf[f"{k}_ms"] / v["median_ms"] for k, v in stages.items()}),
        "setup_s": round(entry.setup_s, 2),
        "notes": entry.notes,
    }


def speedups(results: list[dict]) -> list[dict]:
    """Every backend against torch eager fp32, per preset and streams (same run)."""
    out = []
    for r in results:
        if r["backend"] == "torch":
            continue
        ref = next((t for t in results if t["backend"] == "torch" and t["preset"] == r["preset"]
                    and t["streams"] == r["streams"]), None)
        if ref is None:
            continue
        out.append({"preset": r["preset"], "streams": r["streams"], "backend": r["backend"],
                    "torch_eager_step_ms": ref["step_ms"]["median_ms"], "step_ms": r["step_ms"]["median_ms"],
                    "step_speedup": ref["step_ms"]["median_ms"] / r["step_ms"]["median_ms"],
                    "e2e_speedup": ref["e2e_ms"]["median_ms"] / r["e2e_ms"]["median_ms"]})
    return out


def ort_vs_torch(results: list[dict], target: float = 1.5) -> list[dict]:
    """Exported fused step (onnxruntime CPU) against torch eager fp32: time ratio and speedup."""
    out = []
    for s in speedups(results):
        if s["backend"] != "onnxruntime":
            continue
        out.append({"preset": s["preset"], "streams": s["streams"],
                    "torch_eager_fp32_step_ms": s["torch_eager_step_ms"], "ort_fused_step_ms": s["step_ms"],
                    "ort_over_torch_time_ratio": s["step_ms"] / s["torch_eager_step_ms"],
                    "speedup_ort_fused_vs_torch_eager": s["step_speedup"],
                    "target_speedup": target, "meets_target": s["step_speedup"] >= target})
    return out


def measure_roofs(names: Sequence[str], gemm_n: int, repeats: int = 7,
                  before: dict[str, dict] | None = None) -> dict[str, dict]:
    """GEMM rates for the devices the backends use (CPU fp32; CUDA fp32 and fp16 when a
    CUDA backend is asked). With ``before`` (the run's first measurement), the higher of
    the two is kept per device -- a roof is the best the machine did, and a run on a shared
    machine measures it at its start and its end -- and both are recorded."""
    roofs = {"cpu-fp32": gemm_gflops("cpu", "fp32", n=gemm_n, repeats=repeats)}
    if torch.cuda.is_available() and any(ROOF_KEY[n].startswith("cuda") for n in names):
        roofs["cuda-fp32"] = gemm_gflops("cuda", "fp32", n=max(gemm_n, 4096), repeats=repeats)
        roofs["cuda-fp16"] = gemm_gflops("cuda", "fp16", n=max(gemm_n, 4096), repeats=repeats)
    if before is None:
        return roofs
    out = {}
    for k, now in roofs.items():
        first = before.get(k)
        best = now if first is None or now["gflops"] >= first["gflops"] else first
        out[k] = {**best, "gflops_start_end": [None if first is None else first["gflops"], now["gflops"]]}
    return out


def run(presets: Sequence[str] = ("tiny", "realtime"), streams: Sequence[int] = (1, 4), frames: int = 200,
        block: int = 10, warmup: int = 5, backends: Sequence[str] = DEFAULT_BACKENDS, stages: bool = True,
        ort_stage_graphs: bool = True, with_baseline: bool = True, threads: int | None = None,
        gemm_n: int = 2048, gemm_repeats: int = 7, seed: int = 0, progress: bool = True,
        workdir: str | None = None, onnx_cache: str | None = None, checkpoints: Sequence[str] = ()) -> dict:
    """The whole fps benchmark; returns the JSON-able result (see the module docstring).
    ``checkpoints``: Performer files measured too, each under ``"<its preset> (<file>)"``
    (a warp performer's cost depends on its reference: how much of the frame it can reach)."""
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset as make_preset

    if frames < 1 or block < 1 or not streams or min(streams) < 1:
        raise ValueError("frames, block and every streams count must be >= 1")
    threads_used = set_threads(threads)
    roofs = measure_roofs(backends, gemm_n, gemm_repeats)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="letsplay-fps-"))
    measured, base, unavailable, flops_by = [], [], {}, {}
    def models():
        for name in presets:
            torch.manual_seed(seed)
            yield name, Performer(make_preset(name)).eval()
        for path in checkpoints:
            perf = Performer.load(path).eval()
            yield f"{perf.cfg.preset} ({Path(path).name})", perf

    for name, perf in models():
        flops = frame_flops(perf)
        flops_by[name] = flops
        entries, unav = build_backends(perf, backends, tmp / name, threads_used, ort_stage_graphs, progress,
                                       Path(onnx_cache) if onnx_cache else None)
        for b, why in unav.items():
            unavailable.setdefault(b, why)
        for n in streams:
            ms, failed = measure(entries, perf.cfg, n, frames, block, warmup, stages, progress, f"{name} x{n}")
            for b, why in failed.items():
                unavailable.setdefault(f"{b} ({name}, {n} streams)", why)
            measured += [(e, ms[e.name], name, n, flops) for e in entries if e.name in ms]
        ones = [(e, m) for e, m, p, n, _ in measured if p == name and n == 1]
        if with_baseline and ones:  # ours = the fastest backend at batch 1
            entry = min(ones, key=lambda t: float(np.median(t[1]["e2e"])))[0]
            base.append(baseline(perf, entry, frames, block, warmup, progress))
    roofs = measure_roofs(backends, gemm_n, gemm_repeats, before=roofs)
    results = [summarize(*m, roofs) for m in measured]
    return {
        "benchmark": "fps",
        "machine": machine(),
        "threads": threads_used,
        "settings": {"presets": list(presets), "checkpoints": [str(c) for c in checkpoints],
                     "streams": list(streams), "frames": frames, "block": block,
                     "warmup": warmup, "backends": list(backends), "seed": seed},
        "roof": roofs,
        "flops_per_frame": flops_by,
        "results": results,
        "unavailable": unavailable,
        "speedups_vs_torch_eager": speedups(results),
        "ort_fused_vs_torch_eager": ort_vs_torch(results),
        "baseline": base,
    }


def markdown(r: dict) -> str:
    """The short tables of a result."""
    rows = []
    for x in r["results"]:
        st = x["stages_ms"] or {}
        rows.append([x["preset"], x["streams"], x["backend"], x["device"], x["fps"], x["fps_at_p90"],
                     x["e2e_ms"]["median_ms"], x["e2e_ms"]["p90_ms"], x["cqt_ms"]["median_ms"],
                     *(st[k]["median_ms"] if k in st else None for k in STAGES),
                     f"{100 * x['fraction_of_roof']:.1f}%"])
    cpu = r["roof"]["cpu-fp32"]
    parts = [f"roof: fp32 GEMM {cpu['n']}x{cpu['n']} on {cpu['device']} ({cpu['threads']} threads): "
             f"{cpu['gflops']:.1f} GFLOP/s"
             + "".join(f"; {k} {v['gflops']:.0f} GFLOP/s" for k, v in r["roof"].items() if k != "cpu-fp32"),
             "",
             markdown_table(["preset", "streams", "backend", "device", "fps", "fps@p90", "e2e ms", "e2e p90",
                             "cqt ms", "khp ms", "cvg ms", "warp ms", "stu ms", "of roof"], rows)]
    if r["speedups_vs_torch_eager"]:
        parts += ["", markdown_table(
            ["preset", "streams", "backend", "step ms", "torch eager step ms", "step speedup", "e2e speedup"],
            [[s["preset"], s["streams"], s["backend"], s["step_ms"], s["torch_eager_step_ms"],
              f"{s['step_speedup']:.2f}x", f"{s['e2e_speedup']:.2f}x"] for s in r["speedups_vs_torch_eager"]])]
    for s in r["ort_fused_vs_torch_eager"]:
        if s["preset"] == "realtime":
            parts.append(f"realtime, {s['streams']} stream(s): onnxruntime fused step "
                         f"{s['ort_fused_step_ms']:.2f} ms vs torch eager fp32 {s['torch_eager_fp32_step_ms']:.2f} ms"
                         f" = {s['speedup_ort_fused_vs_torch_eager']:.2f}x"
                         f" ({'meets' if s['meets_target'] else 'misses'} the {s['target_speedup']}x target)")
    if r["baseline"]:
        parts += ["", markdown_table(
            ["preset", "naive ms/frame (nnAudio window + torch eager)", "ours ms/frame", "ours", "speedup"],
            [[b["preset"], b["naive"]["e2e"]["median_ms"], b["ours"]["e2e"]["median_ms"],
              f"{b['ours']['backend']} on {b['ours']['device']}", f"{b['speedup']:.2f}x"] for b in r["baseline"]])]
    if r["unavailable"]:
        parts += ["", "unavailable:"] + [f"- {k}: {v}" for k, v in r["unavailable"].items()]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "realtime"], choices=["tiny", "realtime", "paper"])
    ap.add_argument("--paper", action="store_true", help="add the paper preset (slow)")
    ap.add_argument("--checkpoints", nargs="+", default=[], metavar="FILE",
                    help="Performer checkpoints to measure too (e.g. models/performers/cello.safetensors)")
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 4], help="streams stepped together (default 1 4)")
    ap.add_argument("--frames", type=int, default=200, help="frames timed per backend and config (default 200)")
    ap.add_argument("--block", type=int, default=10, help="frames per interleaved block (default 10)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--no-compile", action="store_true", help="skip torch-compiled (its compile takes minutes)")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive-pipeline comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads (default: torch's)")
    ap.add_argument("--gemm-n", type=int, default=2048, help="matrix size of the roof's GEMM (default 2048)")
    ap.add_argument("--onnx-cache", default=None, metavar="DIR", help="reuse ONNX exports kept in DIR")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    presets = list(dict.fromkeys(args.presets + (["paper"] if args.paper else [])))
    backends = [b for b in args.backends if not (args.no_compile and b == "torch-compiled")]
    r = run(presets, args.streams, args.frames, args.block, args.warmup, backends, stages=not args.no_stages,
            with_baseline=not args.no_baseline, threads=args.threads, gemm_n=args.gemm_n, onnx_cache=args.onnx_cache,
            checkpoints=args.checkpoints)
    write_json(r, args.json)
    print(markdown(r))
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
