"""Losses (Eqs. 2-4, 7), VGG layers and local VGG weight files, State/config helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from letsplay.models import losses
from letsplay.models.coarse import CoarseConfig, CoarseVideoGenerator
from letsplay.models.spec import AudioSpec
from letsplay.models.state import State, StateError
from letsplay.models.vgg import VGG19_LAYERS, VGGFeatures, VGGWeightsError, vgg19_layers


def test_vgg19_layer_indices_match_torchvision() -> None:
    assert VGG19_LAYERS["relu1_1"] == 1 and VGG19_LAYERS["pool1"] == 4
    assert VGG19_LAYERS["relu3_1"] == 11 and VGG19_LAYERS["relu4_1"] == 20
    assert VGG19_LAYERS["relu5_1"] == 29 and VGG19_LAYERS["pool5"] == 36
    full = vgg19_layers(37)
    assert len(full) == 37 and sum(p.numel() for p in full.parameters()) == 20_024_384


def _fake_imagenet(path: Path, upto: int = 5, fmt: str = "safetensors") -> dict[str, np.ndarray]:
    torch.manual_seed(5)
    ref = vgg19_layers(upto)
    sd = {f"features.{k}": v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    if fmt == "npz":
        np.savez(path, **sd)
    else:
        save_file({k: torch.from_numpy(v) for k, v in sd.items()}, str(path))
    return sd


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_cvg_loads_local_vgg_weights(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"vgg.{fmt}"
    sd = _fake_imagenet(path, fmt=fmt)
    cvg = CoarseVideoGenerator(CoarseConfig(vgg_weights=str(path), audio_channels=8, audio_features=8,
                                            hidden=8, enc_channels=8, dec_channels=16), AudioSpec(), (32, 32))
    assert np.array_equal(cvg.vgg[2].weight.detach().numpy(), sd["features.2.weight"])
    with pytest.raises(ValueError, match="vgg_width_div=1"):
        CoarseConfig(vgg_weights=str(path), vgg_width_div=2)


def test_vgg_weight_errors(tmp_path: Path) -> None:
    with pytest.raises(VGGWeightsError, match="does not exist"):
        VGGFeatures(("relu1_1",), weights=str(tmp_path / "none.safetensors"))
    path = tmp_path / "vgg.safetensors"
    _fake_imagenet(path, upto=5)
    with pytest.raises(VGGWeightsError, match="lack"):
        VGGFeatures(("relu2_1",), weights=str(path))  # needs conv2_1 too
    with pytest.raises(VGGWeightsError, match="shape"):
        VGGFeatures(("relu1_1",), weights=str(path), width_div=2)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(VGGWeightsError, match="cannot read"):
        VGGFeatures(("relu1_1",), weights=str(junk))


def test_perceptual_loss() -> None:
    torch.manual_seed(0)
    perc = losses.PerceptualLoss(width_div=16)
    a = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    assert perc(a, a).item() == 0.0
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    assert perc(b, a).item() > 0
    assert not any(p.requires_grad for p in perc.parameters())
    x = b.clone().requires_grad_(True)
    perc(x, a).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # real frames at a larger size are downsampled to the generated size
    big = torch.nn.functional.interpolate(a.reshape(-1, 3, 32, 32), scale_factor=2.0).reshape(2, 3, 3, 64, 64)
    assert perc(a, big).item() < 1e-6


def test_reconstruction_losses() -> None:
    kp = torch.zeros(2, 67, 2)
    real = torch.zeros(2, 67, 2)
    real[..., 0] = 0.3
    real[..., 1] = 0.4
    assert torch.isclose(losses.keypoint_l2(kp, real), torch.tensor(0.25))
    conf = torch.zeros(2, 67)
    assert losses.keypoint_l2(kp, real, conf).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        losses.keypoint_l2(kp, real[:, :25])
    f = torch.zeros(1, 3, 8, 8)
    r = torch.ones(1, 3, 16, 16)
    assert losses.frame_l1(f, r).item() == 1.0  # real area-downsampled to 8x8
    assert losses.heatmap_l1(torch.zeros(1, 7, 4, 4), torch.ones(1, 7, 4, 4)).item() == 1.0


@dataclass(frozen=True)
class _Inner(State):
    a: Tensor
    b: Tensor | None


@dataclass(frozen=True)
class _Outer(State):
    x: _Inner
    y: Tensor
    opt: _Inner | None = None


def test_state_flatten_round_trip() -> None:
    s = _Outer(x=_Inner(a=torch.ones(2), b=None), y=torch.zeros(3))
    d = s.to_dict()
    assert set(d) == {"x.a", "y"}
    back = _Outer.from_dict(d)
    assert back.opt is None and back.x.b is None and torch.equal(back.x.a, s.x.a)
    assert set(s.to_dict("p.")) == {"p.x.a", "p.y"}
    assert _Outer.from_dict(s.to_dict("p."), "p.").y.shape == (3,)
    with pytest.raises(StateError, match="missing"):
        _Outer.from_dict({"x.a": torch.ones(1)})
    with pytest.raises(StateError, match="unexpected"):
        _Outer.from_dict({**d, "x.c": torch.ones(1)})
    m = s.map(lambda t: t + 1)
    assert torch.equal(m.y, torch.ones(3)) and m.x.b is None
    g = _Outer(x=_Inner(a=torch.ones(2, requires_grad=True) * 2, b=None), y=torch.zeros(1))
    assert g.x.a.requires_grad and not g.detach().x.a.requires_grad
