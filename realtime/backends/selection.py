"""Opening a performer on a backend: :func:`open_backend` with :class:`BackendOptions`.

``auto`` picks the fastest backend that really runs here: TensorRT (GPU + tensorrt
installed), else onnxruntime (CUDA provider on a GPU, else CPU), else torch. A
checkpoint run through onnxruntime or TensorRT is exported once into the cache folder
(:func:`letsplay.realtime.performers.export_cache_folder`), so later runs start at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from letsplay.realtime.backends.base import Backend, BackendError, BackendOptions
from letsplay.realtime.backends.onnxruntime_backend import OrtBackend
from letsplay.realtime.backends.torch_backend import TorchBackend

if TYPE_CHECKING:
    from letsplay.models.performer import Performer
    from letsplay.realtime.performers import PerformerRef

log = logging.getLogger(__name__)

PIPELINE_MAX_CORES = 2  # --pipeline auto: measured on a 2-core VM (README "Live: audio to frame")


def open_backend(performer: PerformerRef | str | Path | Performer,
                 options: BackendOptions = BackendOptions()) -> Backend:  # noqa: B008 - frozen: shared safely
    """Open ``performer`` -- a :class:`~letsplay.realtime.performers.PerformerRef`, a
    shipped name / checkpoint file / exported folder (resolved as ``--performer`` is), or
    an in-memory Performer (torch runs it as it is; onnxruntime and TensorRT need a file)
    -- on the backend ``options`` ask for; ``auto`` picks the fastest available.

    ``options.pipeline``: a backend whose frames the engine runs as front and back halves
    on two threads (``EngineConfig.pipeline``; onnxruntime loads the export's front/back
    graphs, one intra-op thread each unless ``threads``). ``None`` (the CLI's ``--pipeline
    auto``): on for fp32 onnxruntime on a CPU with at most :data:`PIPELINE_MAX_CORES`
    cores, where it was measured to drop fewer frames than two-thread operators; off
    elsewhere. ``precision`` other than fp32 (int8, fp16: a variant the export lists)
    means onnxruntime; ``auto`` then picks it. ``cuda_graph`` (``--cuda-graph``): the torch
    backend on CUDA with its step captured into a CUDA graph; it needs ``backend="torch"``
    and a CUDA device (``compute`` "cuda" or unset)."""
    from letsplay.models.performer import Performer
    from letsplay.realtime.performers import PerformerRef, export_cached, resolve_performer

    o = options
    backend, device, precision, pipeline = o.backend, o.compute, o.precision, o.pipeline
    model = performer if isinstance(performer, Performer) else None
    ref = None if model is not None else (
        performer if isinstance(performer, PerformerRef) else resolve_performer(str(performer)))
    if o.cuda_graph:
        if backend != "torch":
            raise BackendError(f"--cuda-graph captures the PyTorch step into a CUDA graph: use it with --backend "
                               f"torch --compute cuda, not --backend {backend}")
        if device is not None and torch.device(device).type != "cuda":
            raise BackendError(f"--cuda-graph needs --compute cuda (CUDA graphs replay GPU kernels), not "
                               f"--compute {device}")
        device = device or "cuda"  # no GPU: TorchBackend says so
    gpu = torch.cuda.is_available()
    if precision != "fp32":
        if backend not in ("auto", "onnxruntime"):
            raise BackendError(f"--precision {precision} is an onnxruntime variant of an exported graph; "
                               f"use --backend onnxruntime (the {backend} backend runs fp32)")
        if not _ort_providers():
            raise BackendError(f"--precision {precision} needs onnxruntime; install letsplay[cpu]")
        if ref is None or ref.kind != "export":
            where = "FILE" if ref is None else ref.path
            raise BackendError(f"--precision {precision} runs a variant of an exported folder; make one with "
                               f"`letsplay export onnx --checkpoint {where} --out DIR --{precision}` and pass "
                               f"--performer DIR")
        backend = "onnxruntime"
        device = device or "cpu"
    if backend == "auto":
        providers = _ort_providers()
        if model is not None:
            backend = "torch"  # an in-memory Performer: the exported backends need it saved first
        elif gpu and _has_tensorrt():
            backend = "tensorrt"
        elif providers:
            backend = "onnxruntime"
            device = device or ("cuda" if gpu and "CUDAExecutionProvider" in providers else "cpu")
        else:
            backend = "torch"
    if backend == "torch":
        if ref is not None and ref.kind != "checkpoint":
            raise BackendError(f"{ref.path} is an exported folder; the torch backend needs the checkpoint "
                               f"(or use --backend onnxruntime)")
        return TorchBackend(model if model is not None else Performer.load(ref.path),
                            device or ("cuda" if gpu else "cpu"), o.torch_dtype, cuda_graph=o.cuda_graph,
                            pipeline=bool(pipeline))
    if ref is None:
        raise BackendError(f"the {backend} backend runs an exported graph, not an in-memory Performer: save it "
                           f"(Performer.save) or export it (`letsplay export onnx`) and open the file")
    if backend == "tensorrt":
        from letsplay.export.tensorrt import import_tensorrt

        import_tensorrt()  # no TensorRT or no GPU: say so now, before exporting anything
    if pipeline is None:
        pipeline = auto_pipeline(backend, device, precision)
        if pipeline and ref.kind == "export" and not _export_has_pipeline(ref.path):
            log.info("%s has no front/back graphs (an older export): running the fused step; re-export it "
                     "for the pipelined one", ref.path)
            pipeline = False
    folder = ref.path if ref.kind == "export" else export_cached(ref.path)
    if backend == "onnxruntime":
        return OrtBackend(folder, provider=device or "cpu", threads=o.threads, allow_fallback=o.allow_fallback,
                          precision=precision, pipeline=pipeline)
    if pipeline:
        raise BackendError("--pipeline runs a frame's halves on two CPU threads (onnxruntime or torch); the "
                           "TensorRT engine runs the fused step: drop --pipeline or pick --backend onnxruntime")
    from letsplay.realtime.backends.tensorrt_backend import TrtBackend  # the native engine: GPU only

    try:
        return TrtBackend(folder, precision=o.trt_precision)
    except (BackendError, ValueError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - anything TensorRT raises while building or loading
        raise BackendError(f"the TensorRT engine for {folder} cannot be built or loaded ({type(e).__name__}: "
                           f"{e}); use --backend onnxruntime") from e


def auto_pipeline(backend: str, device: str | None = None, precision: str = "fp32") -> bool:
    """``--pipeline auto``: fp32 onnxruntime on a CPU of at most PIPELINE_MAX_CORES cores."""
    return (backend == "onnxruntime" and (device or "cpu") == "cpu" and precision == "fp32"
            and usable_cores() <= PIPELINE_MAX_CORES)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _export_has_pipeline(folder: Path) -> bool:
    from letsplay.export.onnx import ManifestError, read_manifest

    try:
        return read_manifest(folder, verify=False).has_pipeline
    except ManifestError:
        return False  # OrtBackend reports what is wrong with the folder


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or installed but broken: not a choice for auto
        return False
    return True
