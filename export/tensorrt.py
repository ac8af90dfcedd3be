"""TensorRT engines from the exported ONNX graphs, cached per GPU, version and precision.

TensorRT is optional (the ``[trt]`` extra) and imported lazily here only. An engine is
only valid for the TensorRT version and GPU it was built on, so the cache key is the
SHA-256 of: the ONNX graph's digest, the TensorRT version, the GPU name and compute
capability, the precision, the batch range (max and opt), whether the network is
strongly typed, and the TF32 setting. A change in any of them builds a new engine; a
stale one is never loaded. The builder's timing cache is kept beside the engines (one
per TensorRT version and GPU), so rebuilds after a small change are quick.

Precisions: ``fp32`` is strict float32 (TF32 tactics off, so it can be compared with the
CPU to 1e-3). ``fp16`` on TensorRT 10 is the fp32 graph built with ``BuilderFlag.FP16``
(weak typing: TensorRT picks fp16 kernels where it likes). TensorRT 11 removed weak
typing and that flag; there the fp16 engine is built, strongly typed, from the export's
float16 variant (``performer.fp16.onnx``: ``letsplay export onnx ... --fp16``), which
:func:`engine_graph` picks.

The runtime side (``TrtBackend``, in ``letsplay.realtime.backends.tensorrt_backend``)
loads the engines built here.

Status: written to the TensorRT 10/11 Python API documentation; no GPU was available to
the sessions that wrote it, so its tests (``tests/test_gpu.py``, marked ``gpu``/``trt``)
have not run yet (``scripts/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from letsplay.export.runtime import BackendError

log = logging.getLogger(__name__)

KEY_FORMAT = 2  # bump when what an engine is built with changes without its inputs changing


class TensorRTUnavailable(BackendError):
    """TensorRT or a CUDA GPU is missing; the message says what to install. A
    :class:`~letsplay.export.runtime.BackendError` (re-exported by
    ``letsplay.realtime.backends``): the CLI shows it as one line."""


def import_tensorrt():
    """The ``tensorrt`` module, once it is known to be usable here (installed, and a CUDA
    GPU visible to torch); :class:`TensorRTUnavailable` otherwise. Cheap: call it before
    any export so a machine without TensorRT is told at once."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, install the [trt] extra "
            "(pip install 'letsplay[trt]'), or run the ONNX graphs instead (--backend onnxruntime; "
            "letsplay export onnx)") from e
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer, CUDA mismatch)
        raise TensorRTUnavailable(
            f"TensorRT is installed but cannot be loaded ({type(e).__name__}: {e}); reinstall the [trt] extra "
            f"matching this machine's CUDA driver, or use --backend onnxruntime") from e
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs an NVIDIA GPU with a CUDA build of torch, and none is visible "
                                  "here: run on a machine with one, or use --backend onnxruntime")
    return trt


def has_weak_fp16(trt) -> bool:
    """TensorRT 10's ``BuilderFlag.FP16`` (removed in 11 with the rest of weak typing)."""
    return hasattr(trt.BuilderFlag, "FP16")


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    trt_version: str
    gpu: str
    compute_capability: str
    precision: str  # "fp32" or "fp16"
    max_batch: int
    opt_batch: int = 1
    strongly_typed: bool = False
    tf32: bool = False
    format: int = KEY_FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


def engine_key(onnx_path: Path, precision: str, max_batch: int, opt_batch: int = 1,
               strongly_typed: bool = False) -> EngineKey:
    import torch

    from letsplay.export.onnx import sha256_file

    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return EngineKey(sha256_file(onnx_path), trt.__version__, torch.cuda.get_device_name(),
                     f"{major}.{minor}", precision, max_batch, opt_batch, strongly_typed,
                     tf32=precision != "fp32")


def engine_graph(manifest, precision: str) -> tuple[Path, bool]:
    """Which graph of an exported folder an engine of ``precision`` is built from, and
    whether strongly typed: the fp32 graph (weakly typed; fp16 through the builder flag on
    TensorRT 10), or on TensorRT 11+ for fp16 the float16 variant, strongly typed."""
    trt = import_tensorrt()
    if precision == "fp16" and not has_weak_fp16(trt):
        if "fp16" in manifest.precisions("performer"):
            return manifest.graph_path("performer", "fp16"), True
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} has no fp16 builder flag (weak typing was removed in TensorRT 11): an fp16 "
            f"engine is built from the float16 variant of the graph, and {manifest.folder} has none; make it with "
            f"`letsplay export onnx --checkpoint FILE --out {manifest.folder} --fp16`, use precision fp32, or "
            f"install TensorRT 10 (pip install 'tensorrt>=10,<11')")
    return manifest.graph_path("performer"), False


def build_engine(onnx_path: str | Path, cache: str | Path, precision: str = "fp16", max_batch: int = 8,
                 opt_batch: int = 1, strongly_typed: bool = False) -> Path:
    """Build (or reuse) a serialized engine for ``onnx_path``; returns the plan's path.

    ``strongly_typed``: the graph carries its own precision (a float16 variant): the
    network is built strongly typed and no precision flag is set."""
    trt = import_tensorrt()
    onnx_path, cache = Path(onnx_path), Path(cache)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch {opt_batch}, max_batch {max_batch}")
    if precision == "fp16" and not strongly_typed and not has_weak_fp16(trt):
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} has no fp16 builder flag (removed in TensorRT 11); build the fp16 engine from "
            f"the float16 variant (performer.fp16.onnx, `letsplay export onnx ... --fp16`) with strongly_typed=True")
    key = engine_key(onnx_path, precision, max_batch, opt_batch, strongly_typed)
    plan = cache / f"{onnx_path.stem}-{precision}-{key.digest()}.plan"
    if plan.is_file():
        log.info("TensorRT engine cache hit: %s", plan.name)
        return plan
    cache.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch: always, in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 means fp32 here
    where = hashlib.sha256(f"{key.trt_version}|{key.gpu}|{key.compute_capability}".encode()).hexdigest()[:12]
    timing_path = cache / f"timing-{where}.cache"  # one per TensorRT version and GPU
    blob = timing_path.read_bytes() if timing_path.is_file() else b""
    timing = config.create_timing_cache(blob)
    if timing is None or config.set_timing_cache(timing, ignore_mismatch=False) is False:
        log.warning("TensorRT did not take the timing cache %s; building without it", timing_path.name)
        timing = config.create_timing_cache(b"")
        config.set_timing_cache(timing, ignore_mismatch=True)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        if any(d < 0 for d in rest):
            raise BackendError(f"{onnx_path}: input {t.name} has a dynamic dimension besides the batch "
                               f"({tuple(t.shape)}); re-export the model")
        profile.set_shape(t.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    log.warning("building a TensorRT %s engine for %s (once per GPU/version)", precision, onnx_path.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine for {onnx_path}")
    tmp = plan.with_suffix(".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(plan)
    timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    plan.with_suffix(".json").write_text(json.dumps(asdict(key), indent=2))
    return plan
