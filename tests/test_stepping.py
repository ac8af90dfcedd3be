"""The stepped-graph vocabulary: flat state names in and out, and a sequence as a loop of step."""

from typing import NamedTuple

import numpy as np
import pytest
import torch

from letsplay.models.stepping import (
    STATE_IN,
    STATE_OUT,
    feeds,
    next_state,
    state_in_name,
    state_names,
    state_out_name,
    unroll,
)


class _Out(NamedTuple):
    y: torch.Tensor
    none: torch.Tensor | None


def test_feeds_and_next_state_close_the_loop() -> None:
    state = {"khp.lstm_h": np.ones((1, 4), np.float32), "stu.gru_h": np.zeros((1, 2), np.float32)}
    f = feeds({"window": np.zeros((1, 3), np.float32)}, state)
    assert list(f) == ["window", state_in_name("khp.lstm_h"), state_in_name("stu.gru_h")]
    assert f[STATE_IN + "khp.lstm_h"] is state["khp.lstm_h"]
    assert state_names(f) == list(state)
    out = {"frame": np.ones(1), state_out_name("stu.gru_h"): np.full((1, 2), 2.0),
           state_out_name("khp.lstm_h"): np.full((1, 4), 3.0)}
    assert set(next_state(out)) == set(state)  # the outputs that are state, prefix removed
    nxt = next_state(out, state)
    assert list(nxt) == list(state) and float(nxt["khp.lstm_h"][0, 0]) == 3.0
    assert state_names(out, STATE_OUT) == ["stu.gru_h", "khp.lstm_h"]


def test_next_state_names_a_missing_state_output() -> None:
    with pytest.raises(KeyError, match="stu.gru_h"):
        next_state({"frame": np.ones(1), state_out_name("khp.lstm_h"): np.ones(1)}, ["khp.lstm_h", "stu.gru_h"])


def test_unroll_is_the_hand_written_loop() -> None:
    """A toy recurrent step (a running sum plus a per-frame input): unroll stacks each
    output on dim 1 like a loop would, keeps None columns None, passes a None sequence
    as None each frame and returns the last state."""
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 1, generator=g)

    def step(xt, zt, nothing, s):
        assert nothing is None
        s = s + xt
        return _Out(s * zt, None), s

    seq, final = unroll(step, torch.zeros(2, 3), (x, z, None))
    s, ys = torch.zeros(2, 3), []
    for t in range(6):
        s = s + x[:, t]
        ys.append(s * z[:, t])
    assert isinstance(seq, _Out) and seq.none is None
    assert torch.equal(seq.y, torch.stack(ys, dim=1)) and torch.equal(final, s)
    plain, _ = unroll(lambda xt, s: (xt * 2, s), torch.zeros(()), (x,))  # a bare tensor output
    assert torch.equal(plain, x * 2)


def test_unroll_refuses_empty_sequences() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        unroll(lambda xt, s: (xt, s), None, (torch.zeros(2, 0, 3),))
    with pytest.raises(ValueError, match="not None"):
        unroll(lambda xt, s: (xt, s), None, (None,))
