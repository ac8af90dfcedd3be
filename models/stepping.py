"""One vocabulary for stepped graphs: flat names of fed-back state, and "a sequence is a loop of step".

Every stage and the Performer step as ``step(inputs, state) -> (outputs, new_state)``
(DESIGN.md "Stages and state"). Flattened (``State.to_dict``) the state is a dict of
names such as ``"khp.lstm_h"``; a stateless graph (ONNX, a backend) takes each as an
input named :data:`STATE_IN` + name and gives its successor as the output named
:data:`STATE_OUT` + name. A pipelined step's front half hands its back half the
tensors named :data:`MID` + name. The host owns the state and feeds it back::

    state = backend.init_state(batch)
    for window in windows:
        out = backend.step(feeds({"window": window}, state))
        state = next_state(out)

:func:`unroll` is the same loop for torch modules: a stage's ``forward`` over a
sequence is exactly :func:`unroll` of its ``step`` (outputs stacked on dim 1).

This module is the only place that spells these prefixes; the export, the backends,
the engine, the benchmarks and the tests import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

STATE_IN = "state_in."  # a stepped graph's input carrying one flat state tensor
STATE_OUT = "state_out."  # its output carrying that tensor's next value
MID = "mid."  # what a pipelined step's front half hands to its back half

S = TypeVar("S")
V = TypeVar("V")


def state_in_name(name: str) -> str:
    """The graph input that carries the flat state tensor ``name`` (``"khp.lstm_h"``)."""
    return STATE_IN + name


def state_out_name(name: str) -> str:
    """The graph output that carries the next value of the flat state tensor ``name``."""
    return STATE_OUT + name


def mid_name(name: str) -> str:
    """The name of a front-to-back hand-over tensor (``"fused"`` -> its graph name)."""
    return MID + name


def feeds(inputs: Mapping[str, V], state: Mapping[str, V]) -> dict[str, V]:
    """A stepped graph's feeds: ``inputs`` as given (``{"window": ...}``), then every
    flat state tensor under its input name."""
    return {**inputs, **{STATE_IN + k: v for k, v in state.items()}}


def next_state(outputs: Mapping[str, V], names: Iterable[str] | None = None) -> dict[str, V]:
    """The next flat state from a step's outputs (those named :data:`STATE_OUT` + name).

    With ``names`` (the current state's names) the result has exactly those names, in
    that order, and a step that did not return one of them is an error.
    """
    if names is None:
        return {k[len(STATE_OUT):]: v for k, v in outputs.items() if k.startswith(STATE_OUT)}
    names = list(names)
    missing = [n for n in names if STATE_OUT + n not in outputs]
    if missing:
        raise KeyError(f"the step returned no next state for {missing} (outputs: {sorted(outputs)}); "
                       "the backend or graph does not fit the state it was fed")
    return {k: outputs[STATE_OUT + k] for k in names}


def state_names(names: Iterable[str], prefix: str = STATE_IN) -> list[str]:
    """The flat state names among graph input (or, with ``prefix=STATE_OUT``, output)
    names, prefix removed, in order."""
    return [n[len(prefix):] for n in names if n.startswith(prefix)]


def _stack(outs: Sequence[Any]) -> Any:
    """Per-frame outputs -> one output stacked on dim 1: a tensor, None, or a (named)
    tuple of them, column by column."""
    first = outs[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.stack(list(outs), dim=1)
    if isinstance(first, tuple):
        cols = [_stack(c) for c in zip(*outs, strict=True)]
        return type(first)(*cols) if hasattr(first, "_fields") else tuple(cols)
    raise TypeError(f"unroll: a step output must be a tensor, None or a tuple of them, got {type(first).__name__}")


def unroll(step: Callable[..., tuple[Any, S]], state: S, inputs_seq: Sequence[Tensor | None]) -> tuple[Any, S]:
    """A sequence forward, exactly a loop of ``step``.

    ``inputs_seq`` holds sequences ``[B, T, ...]`` (or None: passed as None each frame);
    frame ``t`` calls ``step(*(x[:, t] for x in inputs_seq), state) -> (out, state)``.
    Returns the outputs stacked on dim 1 (a tensor, or a named tuple of tensors / None
    like the step's) and the final state.
    """
    ref = next((x for x in inputs_seq if x is not None), None)
    if ref is None:
        raise ValueError("unroll needs at least one input sequence that is not None")
    T = ref.shape[1]
    if T == 0:
        raise ValueError("a sequence needs at least one frame (T >= 1)")
    outs = []
    for t in range(T):
        o, state = step(*(None if x is None else x[:, t] for x in inputs_seq), state)
        outs.append(o)
    return _stack(outs), state
