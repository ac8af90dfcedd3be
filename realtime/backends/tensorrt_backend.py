"""Native TensorRT engines behind the flat-name interface (:class:`TrtBackend`), GPU only.

The engines are built and cached by :mod:`letsplay.export.tensorrt` (keyed by graph,
TensorRT version, GPU and precision). This runtime side uses the TensorRT 10 name-based
tensor API: ``set_input_shape`` per input, ``set_tensor_address`` per I/O tensor, and
``execute_async_v3(stream)``, with I/O buffers allocated once per batch size as torch
CUDA tensors.

Status: written to the TensorRT 10/11 Python API documentation; its tests
(``tests/test_gpu.py``, marked ``gpu``/``trt``) run only where a GPU and TensorRT are
(``scripts/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from letsplay.export.tensorrt import build_engine, engine_graph, import_tensorrt
from letsplay.realtime.backends.base import BackendError

log = logging.getLogger(__name__)


def _torch_dtype(trt, dt):
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise BackendError(f"TensorRT I/O tensor of type {dt} is not supported here")
    return table[dt]


class TrtBackend:
    """A native TensorRT engine behind the flat-name interface; I/O buffers allocated once
    per batch size (torch CUDA tensors), one CUDA stream. ``precision`` fp16 (default) or
    fp32; batches of 1..``max_batch`` streams."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, precision: str = "fp16", max_batch: int = 8, opt_batch: int = 1) -> None:
        import torch

        from letsplay.export.onnx import read_manifest

        trt = import_tensorrt()
        self.manifest = read_manifest(folder)
        self.precision = precision
        self.max_batch = max_batch
        graph, typed = engine_graph(self.manifest, precision)
        self.plan = build_engine(graph, Path(folder) / "trt", precision, max_batch, opt_batch, strongly_typed=typed)
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"{self.plan}: TensorRT could not load the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{self.plan}: TensorRT could not create an execution context")
        self.stream = torch.cuda.Stream()
        self.device = f"cuda ({torch.cuda.get_device_name()}, TensorRT {trt.__version__})"  # + (precision) by describe
        self.provider = "tensorrt"
        self.audio, self.video = self.manifest.audio, self.manifest.video
        self.cfg = None  # an exported graph, not a torch Performer
        self.can_pipeline = self.pipeline = False  # the fused engine only
        self.state_names = tuple(d["name"] for d in self.manifest.state)
        self._state_shapes = {d["name"]: tuple(d["shape"][1:]) for d in self.manifest.state}
        self._names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in self._names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in self._names if n not in self._inputs]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self._names}
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        self._bound: int | None = None  # the batch size whose shapes and addresses the context holds

    def init_state(self, batch: int = 1):
        return {k: np.zeros((batch, *s), np.float32) for k, s in self._state_shapes.items()}

    def _set_shapes(self, batch: int) -> None:
        for n in self._inputs:
            shape = (batch, *tuple(self.engine.get_tensor_shape(n))[1:])
            if not self.context.set_input_shape(n, shape):
                raise RuntimeError(f"TensorRT refused shape {shape} for {n} (the engine takes batches "
                                   f"1..{self.max_batch})")

    def _alloc(self, batch: int):
        import torch

        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} is outside the engine's range 1..{self.max_batch} "
                             f"(TrtBackend(max_batch=...) builds a wider one)")
        bufs = self._buffers.get(batch)
        if bufs is None:
            self._set_shapes(batch)
            self._bound = None
            bufs = {}
            for n in self._names:
                shape = tuple(self.context.get_tensor_shape(n))  # outputs: resolved from the input shapes
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT left {n}'s shape unresolved: {shape}")
                bufs[n] = torch.empty(shape, dtype=self._dtypes[n], device="cuda")
            self._buffers[batch] = bufs
        if self._bound != batch:
            self._set_shapes(batch)
            for n, t in bufs.items():
                if not self.context.set_tensor_address(n, t.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the buffer for {n}")
            self._bound = batch
        return bufs

    def step(self, feeds):
        import torch

        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise ValueError(f"the feeds lack {missing}")
        batch = int(np.shape(feeds["window"])[0])
        bufs = self._alloc(batch)
        with torch.cuda.stream(self.stream):
            for n in self._inputs:
                src = torch.as_tensor(feeds[n])
                if tuple(src.shape) != tuple(bufs[n].shape):
                    raise ValueError(f"{n} is {tuple(src.shape)}, the engine needs {tuple(bufs[n].shape)}")
                bufs[n].copy_(src)  # host (pageable) -> device, on this stream
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = {n: bufs[n].float().cpu().numpy() for n in self._outputs}  # .cpu() waits for the stream
        return out
