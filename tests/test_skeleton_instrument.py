"""Instrument points in the skeleton definition and in the DLT heatmap."""

from __future__ import annotations

import pytest
import torch

from letsplay.models.skeleton import (
    INSTRUMENTS,
    PARTS,
    dlt_heatmap,
    heatmap_channels,
    instrument_edges,
    instrument_point_names,
    mean_pose,
    n_instrument_points,
)


def test_instrument_points_named_with_edges() -> None:
    assert instrument_point_names("cello") == ("bow_frog", "bow_tip", "endpin", "bridge", "scroll")
    assert instrument_point_names("trombone") == ("mouthpiece", "bell", "slide_crook")
    assert instrument_point_names("violin") == () and instrument_edges("violin") == ()
    for inst in INSTRUMENTS:
        k = n_instrument_points(inst)
        edges = instrument_edges(inst)
        assert k > 0 and edges and all(0 <= a < k and 0 <= b < k and a != b for a, b in edges)
        assert {i for e in edges for i in e} == set(range(k))  # every point is on an edge
    assert instrument_edges("cello")[0] == (0, 1)  # the bow: frog to tip


@pytest.mark.parametrize("layout", ["sum", "parts", "keypoints"])
def test_heatmap_draws_instrument_points_only_when_given(layout: str) -> None:
    kp = torch.from_numpy(mean_pose("cello"))[None].repeat(2, 1, 1)
    extra = torch.tensor([[[0.2, 0.3], [0.8, 0.6], [0.5, 0.9]]]).repeat(2, 1, 1).requires_grad_(True)
    body = dlt_heatmap(kp, 32, 32, layout)  # type: ignore[arg-type]
    assert body.shape[-3] == heatmap_channels(layout) == {"sum": 1, "parts": len(PARTS), "keypoints": 67}[layout]
    # no points, or zero points: exactly the 67-point heatmap
    assert torch.equal(dlt_heatmap(kp, 32, 32, layout, extra=extra[:, :0]), body)  # type: ignore[arg-type]
    both = dlt_heatmap(kp, 32, 32, layout, extra=extra, extra_alpha=0.5)  # type: ignore[arg-type]
    assert both.shape[-3] == heatmap_channels(layout, n_extra=3)  # type: ignore[arg-type]
    only = dlt_heatmap(extra, 32, 32, "keypoints") * 0.5  # [2, 3, 32, 32] each point's tent
    if layout == "sum":
        assert torch.allclose(both, body + only.sum(1, keepdim=True))
    elif layout == "parts":
        assert both.shape[-3] == len(PARTS) + 1
        assert torch.equal(both[:, :-1], body) and torch.allclose(both[:, -1], only.sum(1))
    else:
        assert both.shape[-3] == 70 and torch.equal(both[:, :67], body) and torch.allclose(both[:, 67:], only)
    ramp = torch.arange(32.0)[:, None] + 2 * torch.arange(32.0)  # a tent's sum does not move; its mean does
    (both * ramp).sum().backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0  # differentiable in the points
    with pytest.raises(ValueError, match="extra points"):
        dlt_heatmap(kp, 32, 32, layout, extra=extra[0])  # type: ignore[arg-type]
