"""Typed, frozen recurrent state, and (de)serialisation of frozen configs.

DESIGN.md "Stages and state": every stage carries its recurrent memory (LSTM h/c,
ConvGRU hidden, previous frame) in an explicit, frozen dataclass of tensors instead of
hidden module attributes. ``step(inputs, state) -> (outputs, new_state)`` never mutates
its input state, so a stream can be forked, rewound or run in a separate process.

:class:`State` flattens to a dict of named tensors (``"khp.lstm_h"``, ``"stu.gru_h"``);
these names, prefixed as in :mod:`letsplay.models.stepping`, are the ONNX graphs' state
inputs and outputs, so the exported graphs are stateless and the engine owns state. A field that an
ablation does not need is ``None`` and simply absent from the dict.

Frozen config dataclasses are turned into JSON-able dicts and back by
:mod:`letsplay.models.config`; its ``ConfigError``, ``config_to_dict`` and
``config_from_dict`` are re-exported here for older imports.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from letsplay.models.config import ConfigError, config_from_dict, config_to_dict

S = TypeVar("S", bound="State")


class StateError(ValueError):
    """A flat state dict does not match the State it should fill."""


# --------------------------------------------------------------------------- State


def _field_kind(cls: type, name: str) -> tuple[type | None, bool]:
    """(nested State class or None for a tensor, optional?) for one field of ``cls``."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    for t in (hint, *args):
        if isinstance(t, type) and issubclass(t, State):
            return t, optional
    return None, optional


@dataclasses.dataclass(frozen=True)
class State:
    """Base of every recurrent state: a frozen dataclass of tensors or nested States.

    Subclasses only declare fields (``lstm_h: Tensor``, ``gru_h: Tensor | None``,
    ``khp: KeypointState | None``).
    """

    def to_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Flatten to ``{"prefix.field": tensor}``; nested States join names with dots."""
        out: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            name = f"{prefix}{f.name}"
            if v is None:
                continue
            if isinstance(v, State):
                out.update(v.to_dict(name + "."))
            else:
                out[name] = v
        return out

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Tensor], prefix: str = "", *, strict: bool = True) -> S:
        """Inverse of :meth:`to_dict`. Missing required names and (``strict``) extra names
        under ``prefix`` are a :class:`StateError`."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"{prefix}{f.name}"
            nested, optional = _field_kind(cls, f.name)
            if nested is not None:
                if optional and not any(k.startswith(name + ".") for k in d):
                    kwargs[f.name] = None
                else:
                    kwargs[f.name] = nested.from_dict(d, name + ".", strict=False)
            elif name in d:
                kwargs[f.name] = d[name]
            elif optional:
                kwargs[f.name] = None
            else:
                raise StateError(f"state tensor {name!r} is missing; have {sorted(d)}")
        state = cls(**kwargs)
        if strict:
            extra = sorted(set(k for k in d if k.startswith(prefix)) - set(state.to_dict(prefix)))
            if extra:
                raise StateError(f"unexpected state tensor(s) {extra} for {cls.__name__}; "
                                 f"the state comes from a model with another configuration")
        return state

    def map(self: S, fn: Callable[[Tensor], Tensor]) -> S:
        """A new State with ``fn`` applied to every tensor (``detach``, ``.to(device)``...)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kwargs[f.name] = v.map(fn) if isinstance(v, State) else (None if v is None else fn(v))
        return type(self)(**kwargs)

    def where(self: S, reset: Tensor, other: S) -> S:
        """Row by row: ``other``'s tensors where ``reset [B]`` is true, this state's elsewhere
        (lanes that start a new clip go back to the initial state)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return type(self).from_dict({k: torch.where(reset.reshape(-1, *[1] * (v.dim() - 1)), theirs[k], v)
                                     for k, v in mine.items()})

    def detach(self: S) -> S:
        """Cut the autograd history (truncated backprop through time)."""
        return self.map(torch.Tensor.detach)


# --------------------------------------------------------------------------- configs

# Config (de)serialisation lives in letsplay.models.config; these names stay importable here.
__all__ = ["ConfigError", "State", "StateError", "config_from_dict", "config_to_dict"]
