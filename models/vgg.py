"""VGG-19 convolution layers, written out (no torchvision), with optional local weights.

Two users: CVG's image encoder takes VGG's first five layers (paper section III-B:
``conv1_1, relu, conv1_2, relu, pool1``) and the perceptual loss (Eq. 7) reads several
VGG-19 ReLU outputs. Layer indices match torchvision's ``vgg19().features`` so an
ImageNet state dict exported from it (keys ``features.{i}.weight`` / ``.bias``, or
``{i}.weight``) loads as is, from a local ``.safetensors`` or ``.npz`` file. Nothing is
ever downloaded: without a file the layers keep their random Kaiming init.

``width_div`` narrows every layer (64 -> 64 / width_div ...) for cheap configs; narrowed
layers cannot take ImageNet weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# torchvision's "E" configuration: channels, "M" = 2x2 max-pool.
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)


def _layer_names() -> dict[str, int]:
    names, block, n, i = {}, 1, 1, 0
    for v in VGG19_CFG:
        if v == "M":
            names[f"pool{block}"] = i
            block, n, i = block + 1, 1, i + 1
        else:
            names[f"conv{block}_{n}"], names[f"relu{block}_{n}"] = i, i + 1
            n, i = n + 1, i + 2
    return names


VGG19_LAYERS: dict[str, int] = _layer_names()  # "relu3_1" -> index in the Sequential

# ImageNet normalisation the VGG weights expect (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(ValueError):
    """A VGG weights file is missing, unreadable or does not fit the layers."""


def vgg19_layers(upto: int, width_div: int = 1) -> nn.Sequential:
    """``vgg19().features[:upto]``: conv/ReLU/max-pool layers with torchvision indices."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG19_CFG:
        if len(layers) >= upto:
            break
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = max(1, int(v) // width_div)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
    seq = nn.Sequential(*layers[:upto])
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return seq


def _read_weights(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise VGGWeightsError(f"VGG weights file {path!r} does not exist; give a local "
                              f".safetensors or .npz of torchvision's vgg19 state dict, or none "
                              f"to train from scratch")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        from safetensors.numpy import load_file
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001 - any reader failure means the same to the user
        raise VGGWeightsError(f"cannot read VGG weights from {path!r} ({e}); expected a "
                              f".safetensors or .npz file") from e


def load_vgg_weights(layers: nn.Sequential, path: str) -> None:
    """Copy ImageNet VGG-19 weights from a local file into ``layers`` (in place)."""
    raw = _read_weights(path)
    by_index: dict[str, np.ndarray] = {}
    for k, v in raw.items():
        tail = k.split("features.", 1)[1] if "features." in k else k
        by_index[tail] = v
    missing = []
    for i, m in enumerate(layers):
        if not isinstance(m, nn.Conv2d):
            continue
        for name in ("weight", "bias"):
            key = f"{i}.{name}"
            if key not in by_index:
                missing.append(f"features.{key}")
                continue
            t = getattr(m, name)
            v = torch.from_numpy(np.asarray(by_index[key], dtype=np.float32))
            if tuple(v.shape) != tuple(t.shape):
                raise VGGWeightsError(f"VGG weights {path!r}: features.{key} has shape "
                                      f"{tuple(v.shape)}, the layer needs {tuple(t.shape)} "
                                      f"(narrowed layers, width_div > 1, cannot take ImageNet weights)")
            with torch.no_grad():
                t.copy_(v)
    if missing:
        raise VGGWeightsError(f"VGG weights {path!r} lack {missing}; expected torchvision "
                              f"vgg19 state-dict keys")
    log.info("loaded VGG weights for %d layers from %s", len(layers), path)


def imagenet_normalize(frame: Tensor) -> Tensor:
    """Frames in [-1, 1] -> ImageNet-normalised input for VGG layers."""
    # per channel with Python constants: no tensor made from host data per call (a CUDA
    # graph capture cannot hold that host-to-device copy)
    x = (frame + 1.0) * 0.5
    return torch.cat([(x[..., c:c + 1, :, :] - m) / s for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD,
                                                                                     strict=True))], dim=-3)


class VGGFeatures(nn.Module):
    """VGG-19 activations at named layers, e.g. ``("relu1_1", "relu3_1")``, for frames in
    [-1, 1]. Frozen (``requires_grad=False``): a fixed feature extractor."""

    def __init__(self, layers: tuple[str, ...], weights: str | None = None, width_div: int = 1) -> None:
        super().__init__()
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; known: {list(VGG19_LAYERS)}")
        self.names = tuple(layers)
        self.idx = tuple(VGG19_LAYERS[n] for n in layers)
        self.net = vgg19_layers(max(self.idx) + 1, width_div)
        if weights is not None:
            load_vgg_weights(self.net, weights)
        self.requires_grad_(False)

    def forward(self, frame: Tensor) -> list[Tensor]:
        B, C, H, W = frame.shape
        x = imagenet_normalize(frame)
        feats = []
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in self.idx:
                feats.append(x)
        return feats
