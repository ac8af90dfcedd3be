"""Reduced-precision variants of the exported fused ``performer.onnx`` for CPU onnxruntime.

``add_variants(folder, calib_windows, eval_windows, ["int8", "fp16"])`` writes, beside
the fp32 graph, ``performer.int8.onnx`` and/or ``performer.fp16.onnx`` and lists them in
the folder's manifest (``variants``); ``OrtBackend(folder, precision="int8")`` runs one.

* **int8** -- static post-training quantization (``onnxruntime.quantization``, QDQ
  format): per-channel int8 weights, uint8 activations, 7-bit weights (``reduce_range``:
  u8s8 products cannot saturate on x86 CPUs without VNNI), activation ranges from the
  99.999th percentile of the calibration values (MinMax: ~0.5 dB worse and a 4x larger
  worst-frame keypoint error on the realtime preset; twice as fast to calibrate). Calibration
  data are *real stepped inputs*: music windows, each with the recurrent state that the
  fp32 graph itself produced for the frames before it (fed back, as the engine does) --
  zeros or random states would calibrate state-input ranges the model never sees.
  Which operators are quantized is :class:`Int8Options`; by default the compute ops
  (Conv, Gemm, MatMul) except those that read a recurrent state or write a state or an
  output (LSTM/GRU gates, the tanh frame head, the keypoint head), which stay float.
  Measured on the realtime preset (256x256, 100 free-running frames of the demo): ~38 dB
  PSNR vs fp32, with or without those nodes float (+0.2 dB), 36 dB with every
  quantizable op in int8; the error is per step (one step from the fp32 state gives the
  same PSNR), not drift through the recurrent state. On an AVX2 CPU without VNNI the
  int8 convolutions run no faster than fp32 ones (0.94x with the Q/DQ overhead): int8
  pays off on CPUs with VNNI; the CLI and benchmark say what it gives where they run.
* **fp16** -- float16 weights and activations
  (``onnxruntime.transformers.float16.convert_float_to_float16``, float32 I/O kept).
  onnxruntime's CPU provider has float16 kernels for few operators and runs the rest
  through inserted casts: on x86 CPUs this variant is a smaller file, not a faster
  graph (see the measured ``step_ms``).

Every variant is measured before it is recorded: the fp32 graph and the variant run over
the same windows, **each carrying its own state** (free-running, as the engine would),
and the report gives the PSNR of the variant's frames against the fp32 frames (frames in
[-1, 1], peak-to-peak 2; the MSE is pooled over all pixels of all frames), the worst
frame's PSNR, the per-step PSNR (the variant fed the fp32 trajectory's state: the error
of one step alone, without drift), keypoint max/mean abs differences, and median step
times of both graphs measured interleaved in the same run. A variant under ``min_psnr``
is not recorded (its file is removed).

The manifest entry (``variants[precision]``): ``graph``, ``file``, ``sha256``,
``precision``, ``method``, ``settings``, ``calibration`` (int8: frames and source),
``quality`` (the measurement above) and the onnxruntime version that made it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.export.onnx import (
    PRECISIONS,
    ExportError,
    read_manifest,
    record_variants,
    sha256_file,
)
from letsplay.models import stepping
from letsplay.models.config import DictConfig
from letsplay.models.stepping import STATE_IN, STATE_OUT

log = logging.getLogger(__name__)

VARIANTS = PRECISIONS[1:]  # ("int8", "fp16")
DEFAULT_MIN_PSNR = 30.0  # dB: a variant whose frames are further from fp32 than this is not recorded
PSNR_CAP = 120.0  # dB: identical frames (MSE 0) report this, not infinity (JSON has no inf)
GRAPH = "performer"


def variant_file(precision: str, graph: str = GRAPH) -> str:
    return f"{graph}.{precision}.onnx"


@dataclasses.dataclass(frozen=True)
class Int8Options(DictConfig):
    """What the int8 variant quantizes, and how."""

    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")  # operator types given int8 weights / inputs
    keep_state_float: bool = True  # ops reading or writing the recurrent state (gates) stay float
    keep_heads_float: bool = True  # the last compute ops before frame / keypoints / coarse / heatmap stay float
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = True  # 7-bit weights: no u8s8 saturation on x86 CPUs without VNNI (AVX2 only)
    calibrate_method: str = "percentile"  # percentile (99.999%: outliers clipped) | minmax | entropy
    exclude: tuple[str, ...] = ()  # further node names to keep float


class GraphRunner:
    """One onnxruntime CPU session over a graph, on the flat names."""

    def __init__(self, path: Path, threads: int | None) -> None:
        from letsplay.export.runtime import ort_session

        # log_severity_level 3: fp16 graphs make the CPU provider warn per node it cannot constant-fold
        self.session = ort_session(path, "cpu", threads, log_severity_level=3)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.inputs = {i.name: i.shape for i in self.session.get_inputs()}
        self.states = stepping.state_names(self.inputs)

    def init_state(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((1, *self.inputs[stepping.state_in_name(n)][1:]), np.float32) for n in self.states}

    def step(self, window: np.ndarray, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self.outputs, stepping.feeds({"window": window}, state))
        return dict(zip(self.outputs, res, strict=True))

    def next_state(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return stepping.next_state(out, self.states)


def stepped_feeds(graph_path: str | Path, windows: np.ndarray, threads: int | None = 1) -> list[dict[str, np.ndarray]]:
    """The fp32 graph stepped over ``windows`` with its state fed back: each frame's feeds
    (``window`` and every state input) as the engine would give them."""
    g = GraphRunner(Path(graph_path), threads)
    state = g.init_state()
    out = []
    for w in windows:
        w = np.ascontiguousarray(w[None], np.float32)
        out.append(stepping.feeds({"window": w}, state))
        state = g.next_state(g.step(w, state))
    return out


# --------------------------------------------------------------------------- int8


_PASS_OPS = {"Concat", "Reshape", "Slice", "Split", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Flatten",
             "Expand", "Gather", "Cast", "Pad", "Resize", "DepthToSpace", "SpaceToDepth"}
_ELEMENTWISE_OPS = {"Tanh", "Sigmoid", "Mul", "Add", "Sub", "Div", "Clip", "Relu", "LeakyRelu", "Where", "Neg",
                    "Abs", "Exp", "Log"}


def float_nodes(model, op_types: Sequence[str], state: bool = True, heads: bool = True,
                max_depth: int = 12) -> list[str]:
    """Names of the compute nodes (``op_types``) that touch the recurrent state or make an
    output: reached from a state input through shape/copy ops (forward), or
    from a state output / other output tensor through shape and element-wise ops
    (backward: the gates of an LSTM/GRU update, the tanh head). These are the nodes
    whose quantization error feeds back frame after frame, or lands on the output
    unfiltered."""
    compute = set(op_types)
    g = model.graph
    consumers: dict[str, list] = {}
    producer: dict[str, Any] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
        for t in n.output:
            producer[t] = n
    out: set[str] = set()

    def forward(tensor: str, depth: int) -> None:
        for n in consumers.get(tensor, []):
            if n.op_type in compute:
                out.add(n.name)
            elif n.op_type in _PASS_OPS and depth < max_depth:
                for t in n.output:
                    forward(t, depth + 1)

    def backward(tensor: str, depth: int, seen: set[str]) -> None:
        n = producer.get(tensor)
        if n is None or n.name in seen:
            return
        seen.add(n.name)
        if n.op_type in compute:
            out.add(n.name)
        elif (n.op_type in _PASS_OPS or n.op_type in _ELEMENTWISE_OPS) and depth < max_depth:
            for t in n.input:
                backward(t, depth + 1, seen)

    for v in g.input:
        if state and v.name.startswith(STATE_IN):
            forward(v.name, 0)
    for v in g.output:
        if (state and v.name.startswith(STATE_OUT)) or (heads and not v.name.startswith(STATE_OUT)):
            backward(v.name, 0, set())
    return sorted(out)


class _FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feeds (duck-typed: get_next,
    rewind, set_range, __len__)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.start, self.end = 0, len(feeds)
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start + self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.start + self.i - 1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        f = self.get_next()
        if f is None:
            raise StopIteration
        return f

    def __len__(self) -> int:
        return len(self.feeds)

    def rewind(self) -> None:
        self.i = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.i = start_index, end_index, 0


def _stride(n: int, most: int = 32) -> int:
    """The largest slice size <= ``most`` that divides ``n`` (onnxruntime wants equal slices)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def quantize_int8(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]],
                  options: Int8Options = Int8Options()) -> dict[str, Any]:
    """Static QDQ int8 quantization of graph ``src`` into ``dst``, calibrated on ``feeds``
    (see :func:`stepped_feeds`). Returns what was done (the nodes kept float, ...)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.preprocess import quant_pre_process

    if not feeds:
        raise ValueError("int8 calibration needs feeds (stepped windows); got none")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if options.calibrate_method not in methods:
        raise ValueError(f"calibrate_method {options.calibrate_method!r}; choose one of {sorted(methods)}")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="letsplay-quant.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:  # shape inference + basic fusions: what onnxruntime recommends before quantizing. Not its
            # symbolic shape inference: it fails on these graphs and then dumps them into the cwd.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - optional step; quantize the graph as exported
            log.info("quantization pre-processing failed (%s: %s); quantizing the graph as exported",
                     type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            pre = src
        model = onnx.load(str(pre))
        keep = set(options.exclude)
        if options.keep_state_float or options.keep_heads_float:
            keep |= set(float_nodes(model, options.op_types, options.keep_state_float, options.keep_heads_float))
        n_compute = sum(n.op_type in options.op_types for n in model.graph.node)
        n_quant = sum(n.op_type in options.op_types and n.name not in keep for n in model.graph.node)
        del model
        quant_logger = logging.getLogger()  # quantize_static warns through the root logger
        level = quant_logger.level
        quant_logger.setLevel(max(level, logging.ERROR))
        chatter = io.StringIO()  # the histogram calibrators print() their progress: keep it off stdout
        try:
            with contextlib.redirect_stdout(chatter):
                quantize_static(str(pre), str(dst), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
                                reduce_range=options.reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=sorted(keep),
                                calibrate_method=methods[options.calibrate_method],
                                extra_options={"CalibMaxIntermediateOutputs": 16,
                                               # in slices: the histogram calibrators keep every intermediate
                                               # tensor of every frame they are given in memory at once
                                               "CalibStridedMinMax": _stride(len(feeds))})
        finally:
            quant_logger.setLevel(level)
            if chatter.getvalue().strip():
                log.debug("onnxruntime.quantization: %s", " | ".join(chatter.getvalue().split("\n")))
    log.info("int8: quantized %d of %d %s nodes (%d kept float)", n_quant, n_compute,
             "/".join(options.op_types), n_compute - n_quant)
    return {"quantized_nodes": n_quant, "float_nodes": sorted(keep)}


# --------------------------------------------------------------------------- fp16


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Float16 weights and activations, float32 inputs and outputs (casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {}


# --------------------------------------------------------------------------- measuring


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of an MSE for signals spanning ``peak_to_peak`` (frames in [-1, 1]: 2)."""
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(peak_to_peak ** 2 / mse))


def compare(fp32_path: str | Path, variant_path: str | Path, windows: np.ndarray, threads: int | None = 1,
            per_step: bool = True) -> dict[str, Any]:
    """The variant against the fp32 graph over ``windows``: both free-running (each its
    own state), steps interleaved so both timings see the same machine load. With
    ``per_step`` the variant also runs each frame from the fp32 state (untimed)."""
    ref, var = GraphRunner(Path(fp32_path), threads), GraphRunner(Path(variant_path), threads)
    if set(ref.inputs) != set(var.inputs) or ref.outputs != var.outputs:
        raise ExportError(f"{variant_path}: its inputs/outputs differ from the fp32 graph's")
    s_ref, s_var = ref.init_state(), var.init_state()
    t_ref: list[float] = []
    t_var: list[float] = []
    sq_err = sq_err_step = 0.0
    n_px = 0
    worst = PSNR_CAP
    kp_max = kp_sum = 0.0
    kp_n = 0
    for i, w in enumerate(windows):
        w = np.ascontiguousarray(w[None], np.float32)
        first = (ref, s_ref, t_ref), (var, s_var, t_var)
        outs = {}
        for g, s, times in (first if i % 2 == 0 else first[::-1]):  # alternate who goes first
            t0 = time.perf_counter()
            outs[id(g)] = g.step(w, s)
            times.append(time.perf_counter() - t0)
        a, b = outs[id(ref)], outs[id(var)]
        if not all(np.isfinite(v).all() for v in b.values()):
            raise ExportError(f"{variant_path}: frame {i} has non-finite outputs")
        d = (a["frame"].astype(np.float64) - b["frame"]) ** 2
        sq_err += float(d.sum())
        n_px += d.size
        worst = min(worst, psnr(float(d.mean())))
        if "keypoints" in a:
            k = np.abs(a["keypoints"] - b["keypoints"])
            kp_max = max(kp_max, float(k.max()))
            kp_sum += float(k.sum())
            kp_n += k.size
        if per_step:
            c = var.step(w, s_ref)
            sq_err_step += float(((a["frame"].astype(np.float64) - c["frame"]) ** 2).sum())
        s_ref, s_var = ref.next_state(a), var.next_state(b)
    if not n_px:
        raise ValueError("no windows to compare on")
    warm = min(3, len(t_ref) - 1)  # the first steps allocate
    ms_ref = statistics.median(t_ref[warm:]) * 1000
    ms_var = statistics.median(t_var[warm:]) * 1000
    return {
        "frames": len(windows),
        "mode": "free-running: each graph carries its own state",
        "psnr_db": psnr(sq_err / n_px),
        "psnr_min_db": worst,
        "psnr_step_db": psnr(sq_err_step / n_px) if per_step else None,
        "keypoints_max_abs": kp_max if kp_n else None,
        "keypoints_mean_abs": kp_sum / kp_n if kp_n else None,
        "step_ms": {"fp32": ms_ref, "variant": ms_var},
        "speedup": ms_ref / ms_var if ms_var > 0 else None,
        "threads": threads,
    }


# --------------------------------------------------------------------------- the manifest


def add_variants(folder: str | Path, calib_windows: np.ndarray, eval_windows: np.ndarray,
                 precisions: Sequence[str] = ("int8",), int8: Int8Options = Int8Options(),
                 min_psnr: float | None = DEFAULT_MIN_PSNR, threads: int | None = 1, source: str = "",
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Make, measure and record reduced-precision variants of ``folder``'s performer graph.

    ``calib_windows`` ([N, n_bins, window_columns]): the int8 calibration frames (stepped
    through the fp32 graph for their states); ``eval_windows``: the frames the variant is
    measured on. A variant whose PSNR is under ``min_psnr`` (None: no threshold) is not
    recorded. ``source`` says where the windows came from (recorded). Returns a report
    per precision: :func:`compare`'s figures plus ``recorded``, ``file`` and the
    variant's own details."""
    import onnxruntime as ort

    folder = Path(folder)
    note = progress or (lambda s: None)
    for p in precisions:
        if p not in VARIANTS:
            raise ValueError(f"unknown precision {p!r}; choose from {', '.join(VARIANTS)}")
    man = read_manifest(folder)
    src = man.graph_path(GRAPH)
    changes: dict[str, dict[str, Any] | None] = {}  # what to record in the manifest, by precision
    reports: dict[str, dict[str, Any]] = {}
    for p in precisions:
        final = folder / variant_file(p)
        tmp = folder / f".{final.name}.tmp"
        t0 = time.perf_counter()
        if p == "int8":
            note("int8: stepping the fp32 graph for calibration states")
            feeds = stepped_feeds(src, calib_windows, threads)
            note(f"int8: calibrating on {len(feeds)} frames")
            details = quantize_int8(src, tmp, feeds, int8)
            method = f"onnxruntime static QDQ (uint8 activations, int8 weights), {int8.calibrate_method} calibration"
            settings = int8.to_dict()
            calibration = {"frames": len(feeds), "source": source,
                           "state": "the fp32 graph's own state, fed back frame to frame"}
        else:
            note("fp16: converting")
            details = convert_fp16(src, tmp)
            method = "onnxruntime.transformers.float16 (float16 weights and activations, float32 I/O)"
            settings = {"keep_io_types": True}
            calibration = None
        made_s = time.perf_counter() - t0
        note(f"{p}: measuring against fp32 over {len(eval_windows)} frames")
        try:
            quality = compare(src, tmp, eval_windows, threads)
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        rep = {"precision": p, **quality, **details, "make_s": made_s, "calibration_frames":
               calibration["frames"] if calibration else None, "file": final.name, "recorded": True,
               "min_psnr_db": min_psnr}
        if min_psnr is not None and quality["psnr_db"] < min_psnr:
            log.warning("%s variant not recorded: its frames are %.1f dB PSNR from fp32, under the %.1f dB "
                        "threshold", p, quality["psnr_db"], min_psnr)
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            changes[p] = None
            rep["recorded"] = False
            rep["file"] = None
        else:
            tmp.replace(final)
            entry = {
                "graph": GRAPH, "file": final.name, "sha256": sha256_file(final), "precision": p,
                "method": method, "settings": settings,
                "quality": {k: quality[k] for k in ("frames", "mode", "psnr_db", "psnr_min_db", "psnr_step_db",
                                                    "keypoints_max_abs", "keypoints_mean_abs", "step_ms",
                                                    "threads")},
                "quality_source": source, "onnxruntime": ort.__version__,
            }
            if calibration:
                entry["calibration"] = calibration
            if details.get("float_nodes") is not None:
                entry["settings"] = {**settings, "float_nodes": details["float_nodes"],
                                     "quantized_nodes": details["quantized_nodes"]}
            changes[p] = entry
            log.info("%s variant: PSNR %.1f dB vs fp32 over %d frames; %.2f ms/step vs %.2f (fp32)", p,
                     quality["psnr_db"], quality["frames"], quality["step_ms"]["variant"], quality["step_ms"]["fp32"])
        reports[p] = rep
    record_variants(folder, changes)  # the export module writes manifests; what was written reads back
    return reports
