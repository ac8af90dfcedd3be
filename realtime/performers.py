"""Finding a performer and the backend to run it: ``--performer NAME|PATH`` and
``--backend auto|torch|onnxruntime|tensorrt``.

A performer is one of:

* a shipped name (``cello``, ``trombone``): a checkpoint inside the package
  (``models/performers/<name>.safetensors``), nothing to download;
* a checkpoint file (``.safetensors`` written by ``Performer.save`` / ``letsplay train``);
* an exported folder (``manifest.json`` + ONNX graphs, ``letsplay export onnx``).

``auto`` picks the fastest backend that really runs here: TensorRT (GPU + tensorrt
installed), else onnxruntime (CUDA provider on a GPU, else CPU), else torch. A
checkpoint run through onnxruntime is exported once into a cache folder keyed by the
checkpoint's SHA-256 (``$LETSPLAY_CACHE`` or ``~/.cache/letsplay``), so later runs
start at once. ``precision`` int8 / fp16 runs a reduced-precision variant of an exported
folder through onnxruntime (``letsplay export onnx ... --int8 --fp16`` makes them; the
cache holds fp32 only).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from letsplay.realtime.backends import Backend, BackendError, OrtBackend, TorchBackend

log = logging.getLogger(__name__)

def shipped_performers() -> dict[str, Path]:
    """Shipped performer names -> checkpoint paths (those present in this install)."""
    import letsplay.models as m

    d = Path(m.__file__).resolve().parent / "performers"
    return {p.stem: p for p in sorted(d.glob("*.safetensors"))} if d.is_dir() else {}


@dataclass(frozen=True)
class PerformerRef:
    kind: str  # "checkpoint" or "export"
    path: Path
    name: str


def resolve_performer(spec: str | None, instrument: str | None = None) -> PerformerRef:
    """A performer name or path -> what it is. ``None`` means the shipped performer for
    ``instrument`` (default cello)."""
    shipped = shipped_performers()
    if spec is None:
        spec = instrument or "cello"
    if spec in shipped:
        return PerformerRef("checkpoint", shipped[spec], spec)
    p = Path(spec)
    if p.is_dir():
        if not (p / "manifest.json").is_file():
            raise BackendError(f"{p}: a folder without manifest.json is not an exported performer; "
                               f"export one with `letsplay export onnx --checkpoint FILE --out {p}`")
        return PerformerRef("export", p, p.name)
    if p.is_file():
        return PerformerRef("checkpoint", p, p.stem)
    names = ", ".join(shipped) or "none are installed"
    raise BackendError(f"no performer {spec!r}: not a shipped name ({names}), a checkpoint file "
                       f"or an exported folder")


def cache_dir() -> Path:
    return Path(os.environ.get("LETSPLAY_CACHE") or Path.home() / ".cache" / "letsplay")


# Bumped when the exported graphs of the same checkpoint change (2: sub-pixel UpConv
# layers), so a cache written by an older letsplay is exported again, once.
EXPORT_REVISION = 2


def export_cache_folder(checkpoint_sha256: str) -> Path:
    """Where a checkpoint's ONNX export is cached (this letsplay's graph revision)."""
    return cache_dir() / "onnx" / f"{checkpoint_sha256[:16]}-r{EXPORT_REVISION}"


def _export_cached(ckpt: Path) -> Path:
    from letsplay.export.onnx import ManifestError, export_onnx, read_manifest, sha256_file
    from letsplay.models.performer import Performer

    digest = sha256_file(ckpt)
    out = export_cache_folder(digest)
    try:
        if read_manifest(out, checkpoint_sha256=digest).has_pipeline:  # older caches lack the pair
            return out
    except ManifestError:
        pass
    log.warning("exporting %s to ONNX once (cached in %s)", ckpt.name, out)
    export_onnx(Performer.load(ckpt), out, checkpoint_sha256=digest, stages=False, cqt=False, pipeline=True)
    return out


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def open_backend(ref: PerformerRef, backend: str = "auto", device: str | None = None,
                 allow_fallback: bool = False, threads: int | None = None, precision: str = "fp32",
                 cuda_graph: bool = False, pipeline: bool | None = False) -> Backend:
    """Build the backend for a performer; ``auto`` picks the fastest available.
    ``pipeline``: a backend whose frames the engine runs as front and back halves on two
    threads (``EngineConfig.pipeline``; onnxruntime loads the export's front/back graphs,
    one intra-op thread each unless ``threads``). ``None`` (the CLI's ``--pipeline auto``):
    on for fp32 onnxruntime on a CPU with at most :data:`PIPELINE_MAX_CORES` cores, where
    it was measured to drop fewer frames than two-thread operators; off elsewhere.
    ``precision`` other than fp32 (int8, fp16: a variant the export lists) means
    onnxruntime; ``auto`` then picks it. ``cuda_graph`` (``--cuda-graph``): the torch
    backend on CUDA with its step captured into a CUDA graph; it needs ``backend="torch"``
    and a CUDA device (``device`` "cuda" or unset)."""
    from letsplay.models.performer import Performer

    if backend not in ("auto", "torch", "onnxruntime", "tensorrt"):
        raise BackendError(f"unknown backend {backend!r}; choose auto, torch, onnxruntime or tensorrt")
    if cuda_graph:
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
        if ref.kind != "export":
            raise BackendError(f"--precision {precision} runs a variant of an exported folder; make one with "
                               f"`letsplay export onnx --checkpoint {ref.path} --out DIR --{precision}` and pass "
                               f"--performer DIR")
        backend = "onnxruntime"
        device = device or "cpu"
    if backend == "auto":
        providers = _ort_providers()
        if gpu and _has_tensorrt():
            backend = "tensorrt"
        elif providers:
            backend = "onnxruntime"
            device = device or ("cuda" if gpu and "CUDAExecutionProvider" in providers else "cpu")
        else:
            backend = "torch"
    if backend == "torch":
        if ref.kind != "checkpoint":
            raise BackendError(f"{ref.path} is an exported folder; the torch backend needs the checkpoint "
                               f"(or use --backend onnxruntime)")
        return TorchBackend(Performer.load(ref.path), device or ("cuda" if gpu else "cpu"), cuda_graph=cuda_graph,
                            pipeline=bool(pipeline))
    if backend == "tensorrt":
        from letsplay.export.tensorrt import import_tensorrt

        import_tensorrt()  # no TensorRT or no GPU: say so now, before exporting anything
    if pipeline is None:
        pipeline = auto_pipeline(backend, device, precision)
        if pipeline and ref.kind == "export" and not _export_has_pipeline(ref.path):
            log.info("%s has no front/back graphs (an older export): running the fused step; re-export it "
                     "for the pipelined one", ref.path)
            pipeline = False
    folder = ref.path if ref.kind == "export" else _export_cached(ref.path)
    if backend == "onnxruntime":
        return OrtBackend(folder, provider=device or "cpu", threads=threads, allow_fallback=allow_fallback,
                          precision=precision, pipeline=pipeline)
    if pipeline:
        raise BackendError("--pipeline runs a frame's halves on two CPU threads (onnxruntime or torch); the "
                           "TensorRT engine runs the fused step: drop --pipeline or pick --backend onnxruntime")
    from letsplay.export.tensorrt import TrtBackend  # the native engine: GPU only

    try:
        return TrtBackend(folder)
    except (BackendError, ValueError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - anything TensorRT raises while building or loading
        raise BackendError(f"the TensorRT engine for {folder} cannot be built or loaded ({type(e).__name__}: "
                           f"{e}); use --backend onnxruntime") from e


PIPELINE_MAX_CORES = 2  # --pipeline auto: measured on a 2-core VM (README "Live: audio to frame")


def auto_pipeline(backend: str, device: str | None = None, precision: str = "fp32") -> bool:
    """``--pipeline auto``: fp32 onnxruntime on a CPU of at most PIPELINE_MAX_CORES cores."""
    return (backend == "onnxruntime" and (device or "cpu") == "cpu" and precision == "fp32"
            and usable_cores() <= PIPELINE_MAX_CORES)


def _export_has_pipeline(folder: Path) -> bool:
    from letsplay.export.onnx import ManifestError, read_manifest

    try:
        return read_manifest(folder, verify=False).has_pipeline
    except ManifestError:
        return False  # OrtBackend reports what is wrong with the folder


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or installed but broken: not a choice for auto
        return False
    return True
