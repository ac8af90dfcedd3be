"""What the graph runtimes share below ``letsplay.realtime``: :class:`BackendError` and
the one onnxruntime session setup.

``letsplay.export`` builds graphs and engines and may not import ``letsplay.realtime``
(imports flow ui -> realtime -> export -> models), yet building a TensorRT engine can fail
the same way opening a backend does. So the error lives here and
``letsplay.realtime.backends`` re-exports it: ``except BackendError`` catches both.

:func:`ort_session` is how every letsplay onnxruntime session is made -- the realtime
backend, the quantizer's graph runner, the benchmarks -- with :func:`session_options`
(no idle thread spinning) and one provider list: the asked provider, CUDA behind
TensorRT (the nodes TensorRT does not take run on CUDA, not CPU) and CPU last.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class BackendError(RuntimeError):
    """A backend that cannot run as asked; the message says what to do."""


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def ort_provider(provider: str) -> str:
    """``cpu`` / ``cuda`` / ``tensorrt`` (or a full provider name) -> the provider name."""
    return PROVIDERS.get(provider, provider)


def ort_providers(provider: str, provider_options: Mapping[str, Any] | None = None,
                  available: list[str] | None = None) -> list:
    """The provider list for a session asking for ``provider``: it (with its options),
    CUDA behind TensorRT when CUDA is available, and CPU last."""
    import onnxruntime as ort

    want = ort_provider(provider)
    available = ort.get_available_providers() if available is None else available
    providers: list = [(want, {k: str(v) for k, v in provider_options.items()}) if provider_options else want]
    if want == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")  # the nodes TensorRT does not take run on CUDA, not CPU
    if want != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    return providers


def ort_session(path: str | Path, provider: str = "cpu", threads: int | None = None, spinning: bool = False,
                provider_options: Mapping[str, Any] | None = None, log_severity_level: int | None = None,
                available: list[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``path``: :func:`session_options`
    (``threads`` intra-op threads, ``spinning``), :func:`ort_providers` for ``provider``;
    ``log_severity_level`` quiets onnxruntime's own log (3: errors only). onnxruntime's
    own exceptions pass through: the caller knows what the graph is and says so. Which
    provider really runs is the session's first (``session.get_providers()[0]``)."""
    import onnxruntime as ort

    from letsplay.export.onnx import session_options

    so = session_options(threads, spinning)
    if log_severity_level is not None:
        so.log_severity_level = log_severity_level
    return ort.InferenceSession(str(path), so, providers=ort_providers(provider, provider_options, available))
