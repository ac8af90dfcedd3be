"""Skeleton: mean poses, the DLT heatmap (Eq. 1) and the GCN adjacency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from letsplay.models.skeleton import (
    EDGES,
    INSTRUMENTS,
    JOIN_EDGES,
    N_KEYPOINTS,
    PARTS,
    dlt_heatmap,
    heatmap_channels,
    mean_pose,
    normalized_adjacency,
)


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_mean_pose_is_a_plausible_skeleton(instrument: str) -> None:
    p = mean_pose(instrument)
    assert p.shape == (N_KEYPOINTS, 2) and p.dtype == np.float32
    assert (p > 0.02).all() and (p < 0.98).all()  # inside the frame
    # head above neck above hip above ankles; bones are short
    assert p[0, 1] < p[1, 1] < p[8, 1] < p[11, 1]
    bone = np.array([np.linalg.norm(p[a] - p[b]) for a, b in EDGES if (a, b) not in JOIN_EDGES])
    assert bone.max() < 0.3 and bone.min() > 0.0
    for a, b in JOIN_EDGES:  # the body's wrist is the hand's wrist
        assert np.allclose(p[a], p[b])
    p[0] = 0  # a copy: the constant is not modified
    assert mean_pose(instrument)[0, 0] != 0


def test_mean_poses_differ_and_unknown_instrument() -> None:
    assert np.abs(mean_pose("cello") - mean_pose("trombone")).max() > 0.05
    with pytest.raises(ValueError, match="unknown instrument"):
        mean_pose("kazoo")


def _naive(kp: torch.Tensor, H: int, W: int, r: float) -> torch.Tensor:
    """Eq. 1 literally: a loop over pixels and keypoints."""
    out = torch.zeros(H, W, dtype=kp.dtype)
    for y in range(H):
        for x in range(W):
            for s in range(kp.shape[0]):
                kx, ky = kp[s, 0] * W - 0.5, kp[s, 1] * H - 0.5
                out[y, x] += max(0.0, 1 - abs(x - kx) / r) * max(0.0, 1 - abs(y - ky) / r)
    return out


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_dlt_matches_equation_1(radius: float) -> None:
    torch.manual_seed(0)
    kp = torch.rand(5, 2, dtype=torch.float64)
    h = dlt_heatmap(kp, 9, 11, "sum", radius=radius)
    assert h.shape == (1, 9, 11)
    assert torch.allclose(h[0], _naive(kp, 9, 11, radius), atol=1e-12)


def test_dlt_layouts_agree() -> None:
    kp = torch.from_numpy(mean_pose("cello"))[None].repeat(2, 1, 1)  # [2, 67, 2]
    s = dlt_heatmap(kp, 32, 24, "sum")
    p = dlt_heatmap(kp, 32, 24, "parts")
    k = dlt_heatmap(kp, 32, 24, "keypoints")
    assert s.shape == (2, 1, 32, 24) and p.shape == (2, len(PARTS), 32, 24) and k.shape == (2, 67, 32, 24)
    assert heatmap_channels("parts") == len(PARTS) and heatmap_channels("keypoints") == 67
    assert torch.allclose(p.sum(1, keepdim=True), s, atol=1e-5)
    assert torch.allclose(k.sum(1, keepdim=True), s, atol=1e-5)
    # a point off the pixel grid inside the frame deposits total mass 1 with radius 1
    assert torch.allclose(s.sum(dim=(1, 2, 3)), torch.full((2,), 67.0), atol=1e-4)
    with pytest.raises(ValueError, match="layout"):
        dlt_heatmap(kp, 8, 8, "bogus")  # type: ignore[arg-type]


def test_dlt_alpha_weights_points() -> None:
    kp = torch.rand(3, 67, 2)
    alpha = torch.zeros(3, 67)
    alpha[:, 0] = 2.0
    h = dlt_heatmap(kp, 16, 16, "keypoints", alpha=alpha)
    assert h[:, 1:].abs().max() == 0
    assert torch.allclose(h[:, 0], 2 * dlt_heatmap(kp[:, :1], 16, 16, "keypoints")[:, 0])


@pytest.mark.parametrize("layout", ["sum", "parts", "keypoints"])
def test_dlt_gradcheck(layout: str) -> None:
    torch.manual_seed(1)
    H, W = 7, 6
    # |.| and max(0, .) have kinks where a pixel is 0 or exactly `radius` away: put every
    # keypoint a quarter pixel (+- 0.1) off the grid, so pixel distances are never 0 or 1.5
    pix = torch.randint(0, 6, (2, 67, 2)).double() + 0.25 + (torch.rand(2, 67, 2, dtype=torch.float64) - 0.5) * 0.2
    kp = ((pix + 0.5) / torch.tensor([W, H], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda k: dlt_heatmap(k, H, W, layout, radius=1.5), (kp,),
                                    eps=1e-6, atol=1e-5)


def test_normalized_adjacency() -> None:
    a = normalized_adjacency(torch.float64)
    assert a.shape == (67, 67)
    assert torch.allclose(a, a.T)
    assert (a.diagonal() > 0).all()
    i, j = EDGES[0]
    assert a[i, j] > 0
    assert (a > 0).sum() == 67 + 2 * len(set(tuple(sorted(e)) for e in EDGES))
    # every node connected: the skeleton graph is one component
    reach = torch.linalg.matrix_power((a > 0).double(), 67)
    assert (reach[0] > 0).all()


def test_parts_heatmap_differentiable_after_an_inference_mode_call():
    """The cached part-order index must not be an inference tensor: a process that renders
    under inference_mode and then trains or exports (autograd trace) uses the same cache."""
    from letsplay.models.skeleton import _part_order

    _part_order.cache_clear()
    kp = torch.rand(2, 67, 2)
    with torch.inference_mode():
        dlt_heatmap(kp, 16, 16, "parts")
    k = kp.clone().requires_grad_()
    dlt_heatmap(k, 16, 16, "parts").sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0
