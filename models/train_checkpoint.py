"""Serialising training state for checkpoints and exact resume: the numpy / python RNG
states as JSON, the optimizers' state flattened to named tensors (``opt.<name>.<param
index>.<key>``) and back, the performer file's digest, and finding the newest complete
checkpoint folder. :class:`letsplay.models.train.Trainer` writes and reads the checkpoint
folders with these (see :mod:`letsplay.models.train` for the layout).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
