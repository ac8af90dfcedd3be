"""TensorRT engines from the exported ONNX graphs, cached per GPU, version and precision.

TensorRT is optional (the ``[trt]`` extra) and imported lazily here only. An engine is
only valid for the TensorRT version and GPU it was built on, so the cache key is the
SHA-256 of: the ONNX graph's digest, the TensorRT version, the GPU name and compute
capability, the precision and the batch range. A change in any of them builds a new
engine; a stale one is never loaded. The builder's timing cache is kept beside the
engines, so rebuilds after a small change are quick.

Status: written to the TensorRT 10 Python API; no GPU was available to the session
that wrote it, so its tests (marked ``gpu``/``trt``) have not run yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says what to install."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, install letsplay[trt] "
            "(pip install tensorrt), or use --backend onnxruntime / torch") from e
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU and a CUDA build of torch; none is visible")
    return trt


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    trt_version: str
    gpu: str
    compute_capability: str
    precision: str  # "fp32" or "fp16"
    max_batch: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:24]


def engine_key(onnx_path: Path, precision: str, max_batch: int) -> EngineKey:
    import torch

    from letsplay.export.onnx import sha256_file

    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return EngineKey(sha256_file(onnx_path), trt.__version__, torch.cuda.get_device_name(),
                     f"{major}.{minor}", precision, max_batch)


def build_engine(onnx_path: str | Path, cache: str | Path, precision: str = "fp16", max_batch: int = 8,
                 opt_batch: int = 1) -> Path:
    """Build (or reuse) a serialized engine for ``onnx_path``; returns the plan's path."""
    trt = import_tensorrt()
    onnx_path, cache = Path(onnx_path), Path(cache)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    key = engine_key(onnx_path, precision, max_batch)
    plan = cache / f"{onnx_path.stem}-{key.digest()}.plan"
    if plan.is_file():
        log.info("TensorRT engine cache hit: %s", plan.name)
        return plan
    cache.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    timing_path = cache / "timing.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        profile.set_shape(t.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    log.warning("building a TensorRT %s engine for %s (once per GPU/version)", precision, onnx_path.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    tmp = plan.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    plan.with_suffix(".json").write_text(json.dumps(key.__dict__, indent=2))
    return plan


class TrtBackend:
    """A native TensorRT engine behind the flat-name interface; buffers allocated once
    per batch size (torch CUDA tensors), one CUDA stream."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, precision: str = "fp16", max_batch: int = 8) -> None:
        import numpy as np  # noqa: F401
        import torch

        from letsplay.export.onnx import read_manifest

        trt = import_tensorrt()
        self.manifest = read_manifest(folder)
        plan = build_engine(self.manifest.graph_path("performer"), Path(folder) / "trt", precision, max_batch)
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not load the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.device = f"cuda ({torch.cuda.get_device_name()}, TensorRT {trt.__version__}, {precision})"
        self.state_names = tuple(d["name"] for d in self.manifest.state)
        self._state_shapes = {d["name"]: tuple(d["shape"][1:]) for d in self.manifest.state}
        self._names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in self._names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}

    def init_state(self, batch: int = 1):
        import numpy as np

        return {k: np.zeros((batch, *s), np.float32) for k, s in self._state_shapes.items()}

    def _alloc(self, batch: int):
        import torch

        if batch not in self._buffers:
            bufs = {}
            for n in self._inputs:
                shape = (batch, *tuple(self.engine.get_tensor_shape(n))[1:])
                self.context.set_input_shape(n, shape)
            for n in self._names:
                shape = tuple(self.context.get_tensor_shape(n))
                bufs[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self._buffers[batch] = bufs
        bufs = self._buffers[batch]
        for n in self._inputs:
            self.context.set_input_shape(n, tuple(bufs[n].shape))
        for n, t in bufs.items():
            self.context.set_tensor_address(n, t.data_ptr())
        return bufs

    def step(self, feeds):
        import torch

        batch = int(feeds["window"].shape[0])
        bufs = self._alloc(batch)
        with torch.cuda.stream(self.stream):
            for n in self._inputs:
                bufs[n].copy_(torch.from_numpy(feeds[n]), non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = {n: bufs[n].cpu().numpy() for n in self._names if n not in self._inputs}
        self.stream.synchronize()
        return out
