"""A training run's folder and its checkpoints.

Checkpoints (every ``ckpt_every`` steps and at the end), written atomically by
:func:`write_checkpoint`: a folder ``OUT/checkpoints/step-NNNNNNN/`` is filled under a
temporary name and renamed into place, holding

* ``performer.safetensors`` -- :meth:`Performer.save` (usable by everything that loads a
  Performer), also copied (temp + rename) to ``OUT/performer.safetensors``;
* ``train_state.safetensors`` -- the optimizer state tensors flattened
  (``opt.<name>.<param index>.<key>``), the discriminator (``disc.*``), the RNG states
  (``rng.torch``, ``rng.noise``, ``rng.cuda.<i>`` byte tensors) and, as JSON metadata
  (``train_state``), the step, the TrainConfig, the stage schedule, the optimizers'
  param groups, the numpy / python RNG states, the data epoch and position, the
  GradScaler state and the SHA-256 of the performer file it belongs with.

:func:`read_checkpoint` checks that pair before anything is restored.

The out folder is never silently reused (:func:`check_out_folder`, before anything is
written): one that holds a run needs ``resume`` (with the run's settings; the refusal lists
each difference) or ``overwrite`` (the run's own files, :data:`RUN_FILES`, are deleted by
:func:`clear_run`; others stay); a non-empty folder that holds no run is refused either way.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from letsplay.models.performer import Performer, PerformerConfig
    from letsplay.models.train import TrainConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "letsplay.train_state"
STATE_VERSION = 1


def _rng_json() -> dict[str, Any]:
    npst = np.random.get_state()
    py = random.getstate()
    return {"numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
            "python": [py[0], list(py[1]), py[2]]}


def _set_rng_json(d: dict[str, Any]) -> None:
    n = d["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = d["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _flatten_optim(name: str, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, Tensor) else torch.tensor(v)
            tensors[f"opt.{name}.{idx}.{k}"] = t.detach().to("cpu").contiguous().clone()
    return {"param_groups": sd["param_groups"]}


def _unflatten_optim(name: str, opt: torch.optim.Optimizer, meta: dict[str, Any],
                     tensors: dict[str, Tensor], device: torch.device) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    prefix = f"opt.{name}."
    for k, v in tensors.items():
        if k.startswith(prefix):
            idx, key = k[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[key] = v if key == "step" else v.to(device)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _file_sha256(path: Path) -> str:
    from letsplay.models.files import sha256_file

    return sha256_file(path)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete ``OUT/checkpoints/step-*`` folder, or None."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "train_state.safetensors").is_file()
                  and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def write_checkpoint(out: Path, step: int, model: Performer, tensors: dict[str, Tensor], meta: dict[str, Any],
                     noise: torch.Generator, keep: int) -> Path:
    """Write ``OUT/checkpoints/step-NNNNNNN/`` atomically: ``model``, then ``tensors`` plus
    the RNG states and ``meta`` plus the python / numpy RNG and the performer's digest;
    copy the performer to ``OUT/performer.safetensors``; keep the newest ``keep`` folders."""
    from safetensors.torch import save_file

    root = out / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "performer.safetensors")
    tensors = {"rng.torch": torch.get_rng_state(), "rng.noise": noise.get_state(), **tensors}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {**meta, "rng": _rng_json(), "performer_sha256": _file_sha256(tmp / "performer.safetensors")}
    save_file(tensors, str(tmp / "train_state.safetensors"),
              metadata={"format": STATE_FORMAT, "format_version": str(STATE_VERSION),
                        "train_state": json.dumps(meta)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = out / "performer.safetensors"
    part = out / ".performer.safetensors.tmp"
    shutil.copyfile(final / "performer.safetensors", part)
    os.replace(part, latest)
    done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d: %s", step, final)
    return final


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor], Path]:
    """(metadata, tensors, performer file) of a checkpoint folder, after checking that its
    training state and performer file belong together."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    st = folder / "train_state.safetensors"
    with safe_open(str(st), framework="pt") as f:
        fmeta = f.metadata() or {}
    if fmeta.get("format") != STATE_FORMAT:
        raise ValueError(f"{st}: not a letsplay training state")
    meta = json.loads(fmeta["train_state"])
    pf = folder / "performer.safetensors"
    if _file_sha256(pf) != meta["performer_sha256"]:
        raise ValueError(f"{folder}: performer.safetensors does not belong to train_state.safetensors "
                         f"(digest differs); delete the folder to resume from the one before")
    return meta, load_file(str(st)), pf


def restore_rng(meta: dict[str, Any], tensors: dict[str, Tensor], noise: torch.Generator) -> None:
    """Every random generator as the checkpoint left it (call after building the modules:
    their initialisation draws from torch's generator)."""
    torch.set_rng_state(tensors["rng.torch"])
    noise.set_state(tensors["rng.noise"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    _set_rng_json(meta["rng"])


def module_tensors(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state as CPU copies named ``<prefix>.<key>``."""
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- the run folder

# Everything the trainer writes into its --out folder (and all that --overwrite deletes).
RUN_FILES = ("performer.safetensors", ".performer.safetensors.tmp", "metrics.jsonl", "train_config.json",
             "checkpoints", "tb")


def is_run_folder(out: str | Path) -> bool:
    """Whether ``out`` holds a letsplay training run (its ``train_config.json`` or checkpoints)."""
    out = Path(out)
    ck = out / "checkpoints"
    return (out / "train_config.json").is_file() or (ck.is_dir() and any(ck.glob("step-*")))


def run_settings(out: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Path] | None:
    """(train config, model config, where read) of the run in ``out``: its newest checkpoint's,
    else its ``train_config.json``'s; None when it has neither."""
    try:
        ck = latest_checkpoint(out)
        if ck is not None:
            from safetensors import safe_open

            with safe_open(str(ck / "train_state.safetensors"), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["train_state"])
            return meta.get("train_config"), meta.get("model_config"), ck
        path = out / "train_config.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return d.get("train"), d.get("model"), path
    except Exception as e:  # noqa: BLE001 - a damaged run: say so in words
        raise ValueError(f"{out}: cannot read the run's settings ({e}); use --overwrite to start it over") from e
    return None


def _differences(old: Any, new: Any, name: str = "") -> list[str]:
    """``name: run X, now Y`` for each leaf that differs between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{name}.{k}" if name else str(k))
        return out
    return [] if old == new else [f"{name}: run {old!r}, now {new!r}"]


def check_out_folder(out: str | Path, cfg: TrainConfig, model_cfg: PerformerConfig | None = None, *,
                     resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an ``out`` folder the run would damage; reads only, writes nothing.

    * empty or absent: fine (``resume`` then starts a fresh run);
    * not empty and not a letsplay run (no ``train_config.json``, no checkpoints): refused,
      even with ``overwrite`` (it is someone else's folder);
    * a run: refused unless ``resume`` (its settings -- ``cfg`` and, when given, ``model_cfg``
      -- must equal the run's; the message lists each difference) or ``overwrite`` (the
      caller then deletes the run's files, :func:`clear_run`).
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it over; choose one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run_folder(out):
        raise ValueError(f"--out {out} is not empty and holds no letsplay training run (no train_config.json, "
                         f"no checkpoints/); choose a new or empty folder")
    if overwrite:
        return
    if not resume:
        raise ValueError(f"--out {out} already holds a training run; add --resume to continue it, --overwrite "
                         f"to start over (deleting its checkpoints, performer.safetensors and metrics), or "
                         f"choose a new folder")
    prev = run_settings(out)
    if prev is None:
        return
    old_train, old_model, where = prev
    new_train = json.loads(json.dumps(cfg.to_dict()))
    if old_train is not None and cfg.minutes > 0 and int(old_train.get("steps", 0)) <= cfg.steps:
        new_train["steps"] = old_train["steps"]  # a time-budgeted run chose its own step count
    diffs = [] if old_train is None else _differences(old_train, new_train)
    if model_cfg is not None and old_model is not None:
        diffs += _differences(old_model, json.loads(json.dumps(model_cfg.to_dict())), "model")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(f"--resume with other training settings than the run in {out} ({where.name}): {shown}. "
                         f"Use the run's options, --overwrite to start over, or a new --out")


def clear_run(out: str | Path) -> None:
    """Delete the files a training run wrote into ``out`` (:data:`RUN_FILES`); nothing else."""
    out = Path(out)
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("cleared the earlier run in %s", out)
