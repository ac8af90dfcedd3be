"""Inference backends: one ``step(feeds) -> outputs`` interface on flat names, opened by
one :func:`open_backend` with :class:`BackendOptions`.

* :class:`TorchBackend` (``torch_backend``) -- the PyTorch Performer; CPU or CUDA, fp16 /
  bf16, optional CUDA graphs;
* :class:`OrtBackend` (``onnxruntime_backend``) -- an exported ONNX graph through
  onnxruntime (CPU, CUDA, TensorRT execution providers), its precision variants, IO
  binding on the GPU providers, the front/back pipeline pair;
* :class:`TrtBackend` (``tensorrt_backend``) -- native TensorRT engines built and cached
  by :mod:`letsplay.export.tensorrt`, GPU only.

Every backend exposes the :class:`Backend` attributes (specs, manifest or config, device,
provider, precision, whether it can pipeline); :func:`describe` says in words what runs.
Every failure to open one is a :class:`BackendError` whose message says what to do.
:class:`TrtBackend` is imported on first use (it pulls in TensorRT's engine builder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from letsplay.export.runtime import GPU_PROVIDERS, PROVIDERS
from letsplay.realtime.backends.base import (
    MID,
    STATE_IN,
    STATE_OUT,
    Backend,
    BackendError,
    BackendOptions,
    describe,
    pipelined,
)
from letsplay.realtime.backends.onnxruntime_backend import OrtBackend
from letsplay.realtime.backends.selection import PIPELINE_MAX_CORES, auto_pipeline, open_backend, usable_cores
from letsplay.realtime.backends.torch_backend import TorchBackend

if TYPE_CHECKING:
    from letsplay.realtime.backends.tensorrt_backend import TrtBackend

__all__ = [
    "GPU_PROVIDERS",
    "MID",
    "PIPELINE_MAX_CORES",
    "PROVIDERS",
    "STATE_IN",
    "STATE_OUT",
    "Backend",
    "BackendError",
    "BackendOptions",
    "OrtBackend",
    "TorchBackend",
    "TrtBackend",
    "auto_pipeline",
    "describe",
    "open_backend",
    "pipelined",
    "usable_cores",
]


def __getattr__(name: str) -> Any:
    if name == "TrtBackend":
        from letsplay.realtime.backends.tensorrt_backend import TrtBackend

        return TrtBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
