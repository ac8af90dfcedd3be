"""Finding a performer: ``--performer NAME|PATH``; the backend that runs it is opened by
:func:`letsplay.realtime.backends.open_backend` (``--backend auto|torch|onnxruntime|tensorrt``).

A performer is one of:

* a shipped name (``cello``, ``trombone``): a checkpoint inside the package
  (``models/performers/<name>.safetensors``), nothing to download;
* a checkpoint file (``.safetensors`` written by ``Performer.save`` / ``letsplay train``);
* an exported folder (``manifest.json`` + ONNX graphs, ``letsplay export onnx``).

A checkpoint run through onnxruntime or TensorRT is exported once into a cache folder
keyed by the checkpoint's SHA-256 (``$LETSPLAY_CACHE`` or ``~/.cache/letsplay``), so later runs
start at once. ``precision`` int8 / fp16 runs a reduced-precision variant of an exported
folder through onnxruntime (``letsplay export onnx ... --int8 --fp16`` makes them; the
cache holds fp32 only).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from letsplay.realtime.backends import BackendError

__all__ = ["PerformerRef", "cache_dir", "export_cache_folder", "export_cached", "resolve_performer",
           "shipped_performers"]

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


def export_cached(ckpt: Path) -> Path:
    """The cached ONNX export of a checkpoint, exported now if missing or stale."""
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


def performer_instrument(ref: PerformerRef) -> str | None:
    """The instrument a performer plays, read from its metadata only (None if unreadable:
    loading it then says what is wrong)."""
    try:
        if ref.kind == "export":
            return json.loads((Path(ref.path) / "manifest.json").read_text()).get("instrument")
        from safetensors import safe_open

        with safe_open(str(ref.path), "pt") as f:
            return (f.metadata() or {}).get("instrument")
    except Exception:  # noqa: BLE001 - only a consistency check; the real load reports errors
        return None
