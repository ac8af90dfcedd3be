"""The backend interface: one ``step(feeds) -> outputs`` on flat names, and what every
backend says about itself.

Names (the exported graphs' manifest uses the same; the state prefixes are
:mod:`letsplay.models.stepping`'s):

* in:  ``window`` [B, n_bins, window_columns] float32, and every state tensor of the
  Performer under its input name (``stepping.state_in_name("khp.lstm_h")``, ...);
* out: ``frame`` [B, 3, H, W] in [-1, 1], ``keypoints`` [B, 67, 2] (when the model has
  KHP), ``coarse`` and ``heatmap`` (debug views, when present), and every state tensor
  under its output name.

The engine owns the state: ``stepping.feeds`` / ``stepping.next_state`` carry it across frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from letsplay.export.runtime import BackendError
from letsplay.models.stepping import MID, STATE_IN, STATE_OUT  # re-exported for the backends

if TYPE_CHECKING:
    from letsplay.export.onnx import Manifest
    from letsplay.models.spec import AudioSpec, VideoSpec

__all__ = ["MID", "STATE_IN", "STATE_OUT", "Backend", "BackendError", "BackendOptions", "describe", "pipelined"]

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


class Backend(Protocol):
    """What every backend exposes (as real attributes) and runs."""

    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # what really runs: "cpu", "cuda:0 (NVIDIA H100)", "CPUExecutionProvider", ...
    provider: str  # the runtime executing the graph: "pytorch", the onnxruntime provider that runs, "tensorrt"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    audio: AudioSpec  # the specs the model was built for
    video: VideoSpec
    cfg: Any  # the torch Performer's PerformerConfig; None for an exported graph
    manifest: Manifest | None  # the exported folder's manifest; None for a torch Performer
    can_pipeline: bool  # has ``front`` / ``back`` halves the engine can run on two threads
    pipeline: bool  # opened to be run pipelined (``EngineConfig.pipeline``)
    state_names: tuple[str, ...]  # flat state names, without the input/output prefix

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]: ...

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BackendOptions:
    """How :func:`~letsplay.realtime.backends.open_backend` opens a performer.

    ``backend``: auto (the fastest one really available), torch, onnxruntime or tensorrt.
    ``compute``: the device -- ``cpu`` / ``cuda`` for torch, the provider (``cpu``,
    ``cuda``, ``tensorrt``) for onnxruntime; None picks. ``precision``: fp32, or a
    reduced-precision variant an export lists (int8, fp16), which means onnxruntime.
    ``threads``: onnxruntime intra-op threads. ``cuda_graph``: the torch step captured into
    a CUDA graph (torch on CUDA only). ``allow_fallback``: accept the provider onnxruntime
    falls back to. ``pipeline``: True / False (the default: the fused step), or None for
    ``--pipeline auto`` (what the CLI defaults to).
    ``torch_dtype`` (fp32, fp16 on CUDA, bf16) and ``trt_precision`` (fp16 or fp32): the
    torch backend's compute dtype and the native TensorRT engine's precision.
    """

    backend: str = "auto"
    compute: str | None = None
    precision: str = "fp32"
    threads: int | None = None
    cuda_graph: bool = False
    allow_fallback: bool = False
    pipeline: bool | None = False
    torch_dtype: str = "fp32"
    trt_precision: str = "fp16"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BackendError(f"unknown backend {self.backend!r}; choose auto, torch, onnxruntime or tensorrt")


def pipelined(b: Backend) -> bool:
    """True when ``b`` can run a frame as two halves (``front`` then ``back``), so the
    engine can run frame t's back beside frame t + 1's front (``EngineConfig.pipeline``).
    A wrapper that does not say (a benchmark's timing proxy) cannot."""
    return bool(getattr(b, "can_pipeline", False))


def describe(b: Backend) -> str:
    """``<name> on <device>``, with the precision when not fp32 (the torch dtype is not
    shown) and whether it runs pipelined. Wrappers that only carry ``name`` and ``device``
    are described as fp32, unpipelined."""
    precision = "fp32" if b.name == "torch" else getattr(b, "precision", "fp32")
    halves = ", pipelined front/back" if getattr(b, "pipeline", False) else ""
    return f"{b.name} on {b.device}" + ("" if precision == "fp32" else f" ({precision})") + halves
