"""One strict mechanism for frozen config dataclasses <-> JSON-able dicts.

Checkpoints, manifests and datasets store their configs and specs as JSON, so reading one
back must be exact: a field this letsplay does not know, a required field that is absent
or a value of the wrong type is an error that names the field, never a silent guess.

Mix :class:`DictConfig` into a ``@dataclass(frozen=True)`` to get ``to_dict``,
``from_dict``, ``to_json`` and ``from_json``. The conversion rules live in
:func:`config_to_dict` and :func:`config_from_dict`; any typed config dataclass can be
converted with them, mixin or not (nested configs need not use the mixin).

Writing (``to_dict``): nested dataclasses become dicts, tuples become lists, everything
else is kept as it is. ``to_json`` is ``json.dumps(to_dict(), sort_keys=True)``, so the
same config always gives the same text (stored specs are compared as text).

Reading (``from_dict``), field by field from the type annotations:

* unknown keys: error naming them and the class;
* missing keys: the field's default; a missing field without a default is an error;
* ``int``: an int, or a float with a whole value (``256.0`` from other JSON writers);
  never a bool, never a string;
* ``float``: an int or a float, stored as float; never a bool, never a string;
* ``bool``: only ``true``/``false``; ``str``: only a string (no number is turned into text);
* ``Literal[...]``: one of the listed values; ``X | None``: ``null`` or an ``X``;
* ``tuple[X, ...]``: a list (or tuple) of ``X``; ``tuple[X, Y]``: exactly that many items;
* a nested dataclass: rebuilt recursively from its dict by these same rules (an instance
  is taken as it is); errors carry the dotted path (``PerformerConfig.stu.depth``) and are
  raised as the outermost class's error type;
* ``Any``: taken as it is.

The class's own ``__post_init__`` checks then run as usual. Errors are raised as the
class's ``config_error`` (:class:`ConfigError` unless the class names a subclass-specific
``ValueError``, as the specs do with ``SpecError``); a ``ValueError``/``TypeError`` from
``__post_init__`` that is not already of that type is wrapped in it, prefixed with the class.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, TypeVar

C = TypeVar("C")
D = TypeVar("D", bound="DictConfig")


class ConfigError(ValueError):
    """A config dict has unknown, missing or mistyped fields."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass (possibly nested, with tuples) -> JSON-able dict."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return config_to_dict(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _coerce(hint: Any, v: Any, where: str, error: type[ValueError]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, where, error)
            except error:
                pass
        raise error(f"{where}: {v!r} does not fit {hint}")
    if origin is typing.Literal:
        if not any(v == a and type(v) is type(a) for a in args):
            raise error(f"{where}: {v!r} is not one of {list(args)}")
        return v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise error(f"{where}: expected a list, got {v!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], x, f"{where}[{i}]", error) for i, x in enumerate(v))
        if not args:
            return tuple(v)
        if len(v) != len(args):
            raise error(f"{where}: expected a list of {len(args)} items, got {len(v)}: {v!r}")
        return tuple(_coerce(a, x, f"{where}[{i}]", error) for i, (a, x) in enumerate(zip(args, v, strict=True)))
    if hint is Any:
        return v
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(v, hint):
            return v
        return config_from_dict(hint, v, where, error)
    if hint is bool:
        if not isinstance(v, bool):
            raise error(f"{where}: expected true/false, got {v!r}")
        return v
    if hint is int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise error(f"{where}: expected an int, got {v!r}")
        return v
    if hint is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise error(f"{where}: expected a number, got {v!r}")
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise error(f"{where}: expected a string, got {v!r}")
        return v
    raise error(f"{where}: unsupported config type {hint}")


def config_from_dict(cls: type[C], d: dict[str, Any], where: str | None = None,
                     error: type[ValueError] = ConfigError) -> C:
    """Strict inverse of :func:`config_to_dict` (rules: this module's docstring).

    Unknown, missing-required and mistyped fields raise ``error`` naming the field.
    """
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise error(f"{where} must be a JSON object (dict), got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise error(f"{where}: unknown field(s) {unknown}; the file was written by another "
                    f"letsplay version or edited by hand")
    missing = sorted(n for n, f in fields.items() if n not in d and f.init
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise error(f"{where}: required field(s) {missing} missing; the stored config is incomplete")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}", error) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except error:
        raise
    except (TypeError, ValueError) as e:
        raise error(f"{where}: {e}") from e


class DictConfig:
    """Mixin for frozen config dataclasses: strict ``to_dict``/``from_dict``/``to_json``/``from_json``.

    The rules are in this module's docstring. A class may set ``config_error`` to the
    ``ValueError`` subclass its readers expect (default :class:`ConfigError`).
    """

    config_error: ClassVar[type[ValueError]] = ConfigError

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: nested configs as dicts, tuples as lists."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[D], d: dict[str, Any]) -> D:
        """Rebuild from :meth:`to_dict` output; unknown, missing or mistyped fields raise."""
        return config_from_dict(cls, d, error=cls.config_error)

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys): the same config always gives the same text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[D], s: str) -> D:
        """Rebuild from :meth:`to_json` text; damaged JSON or a non-object raise."""
        try:
            d = json.loads(s)
        except (json.JSONDecodeError, TypeError) as e:
            raise cls.config_error(f"cannot read {cls.__name__} from JSON ({e}); "
                                   f"the stored config is damaged") from e
        if not isinstance(d, dict):
            raise cls.config_error(f"{cls.__name__} JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)
