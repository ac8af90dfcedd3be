"""Typed, frozen recurrent state, and (de)serialisation of frozen configs.

DESIGN.md "Stages and state": every stage carries its recurrent memory (LSTM h/c,
ConvGRU hidden, previous frame) in an explicit, frozen dataclass of tensors instead of
hidden module attributes. ``step(inputs, state) -> (outputs, new_state)`` never mutates
its input state, so a stream can be forked, rewound or run in a separate process.

:class:`State` flattens to a dict of named tensors (``"khp.lstm_h"``, ``"stu.gru_h"``);
these names, prefixed as in :mod:`letsplay.models.stepping`, are the ONNX graphs' state
inputs and outputs, so the exported graphs are stateless and the engine owns state. A field that an
ablation does not need is ``None`` and simply absent from the dict.

The second half of this file turns frozen config dataclasses into JSON-able dicts and
back, strictly: unknown or mistyped fields are an error (checkpoints store configs).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="State")
C = TypeVar("C")


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

    def detach(self: S) -> S:
        """Cut the autograd history (truncated backprop through time)."""
        return self.map(torch.Tensor.detach)


# --------------------------------------------------------------------------- configs


class ConfigError(ValueError):
    """A config dict has unknown, missing or mistyped fields."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen config dataclass (possibly nested, with tuples) -> JSON-able dict."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if hasattr(v, "to_dict"):
            v = v.to_dict()
        elif dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(hint: Any, v: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {v!r} does not fit {hint}")
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{where}: {v!r} is not one of {list(args)}")
        return v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, x, where) for x in v)
    if hint is Any:
        return v
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hasattr(hint, "from_dict"):
            try:
                return hint.from_dict(v)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from e
        return config_from_dict(hint, v, where)
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: expected true/false, got {v!r}")
        return v
    if hint is int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{where}: expected an int, got {v!r}")
        return v
    if hint is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where}: expected a string, got {v!r}")
        return v
    raise ConfigError(f"{where}: unsupported config type {hint}")


def config_from_dict(cls: type[C], d: dict[str, Any], where: str | None = None) -> C:
    """Strict inverse of :func:`config_to_dict`: unknown/missing/mistyped fields raise."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; written by another letsplay "
                          f"version or edited by hand")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
