"""Reconstruction losses of the paper (section III): Eqs. 2, 3, 4 and 7.

* Eq. 2 :func:`keypoint_l2` -- keypoints in coordinate space;
* Eq. 3 :func:`heatmap_l1` -- keypoints in visual space (DLT heatmaps);
* Eq. 4 :func:`frame_l1` -- coarse video (CVG) against the real frames, also used as
  the STU's pixel loss;
* Eq. 7 :class:`PerceptualLoss` -- L1 between VGG-19 features of real and generated
  frames.

The adversarial Eqs. 5-6 live with the discriminator (``models/discriminator.py``).
All losses are means (over batch, time and elements), so their scale does not depend
on the batch size, sequence length or frame size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.vgg import VGGFeatures


def keypoint_l2(pred: Tensor, real: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Eq. 2: mean squared distance between predicted and real keypoints ``[..., P, 2]``.

    The squared form of the paper's L2 (smooth at zero error). ``confidence`` ``[..., P]``
    weights each keypoint (OpenPose confidences; 0 drops a missing point); the result is
    the confidence-weighted mean.
    """
    if pred.shape != real.shape:
        raise ValueError(f"keypoint shapes differ: pred {tuple(pred.shape)}, real {tuple(real.shape)}")
    d2 = (pred - real).pow(2).sum(-1)  # [..., P]
    if confidence is None:
        return d2.mean()
    w = confidence.to(d2.dtype)
    return (d2 * w).sum() / w.sum().clamp_min(1e-8)


def keypoint_distance(pred: Tensor, real: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Eq. 2 as the paper writes it: the mean distance between predicted and real keypoints
    ``[..., P, 2]`` (``||.||_2``, not squared), confidence-weighted like :func:`keypoint_l2`.
    Its gradient has the same size at every error, so a point the audio leaves uncertain
    is pulled to its likelier place rather than to the mean of the candidates."""
    if pred.shape != real.shape:
        raise ValueError(f"keypoint shapes differ: pred {tuple(pred.shape)}, real {tuple(real.shape)}")
    d = ((pred - real).pow(2).sum(-1) + 1e-8).sqrt()  # [..., P]; the epsilon keeps the gradient finite at 0
    if confidence is None:
        return d.mean()
    w = confidence.to(d.dtype)
    return (d * w).sum() / w.sum().clamp_min(1e-8)


def heatmap_l1(pred: Tensor, real: Tensor) -> Tensor:
    """Eq. 3: mean absolute difference between DLT heatmaps ``[..., C, H, W]``."""
    if pred.shape != real.shape:
        raise ValueError(f"heatmap shapes differ: pred {tuple(pred.shape)}, real {tuple(real.shape)}")
    return (pred - real).abs().mean()


def resize_like(real: Tensor, like: Tensor) -> Tensor:
    """Area-downsample (or bilinearly upsample) frames ``[..., C, H, W]`` to ``like``'s size."""
    if real.shape[-2:] == like.shape[-2:]:
        return real
    lead, (C, H, W) = real.shape[:-3], real.shape[-3:]
    size = tuple(like.shape[-2:])
    x = real.reshape(-1, C, H, W)
    mode = "area" if H >= size[0] and W >= size[1] else "bilinear"
    x = F.interpolate(x, size=size, mode=mode) if mode == "area" else F.interpolate(
        x, size=size, mode=mode, align_corners=False)
    return x.reshape(*lead, C, *size)


def frame_l1(fake: Tensor, real: Tensor) -> Tensor:
    """Eq. 4: mean L1 between generated and real frames ``[..., 3, H, W]`` in [-1, 1].

    The real frames are area-downsampled to the generated size when they are larger
    (CVG generates at a fraction of the video size).
    """
    return (fake - resize_like(real, fake)).abs().mean()


def weighted_frame_l1(fake: Tensor, real: Tensor, weight: Tensor) -> Tensor:
    """:func:`frame_l1` with a per-pixel weight ``[..., H, W]`` (broadcast over the colours),
    normalised by the weights' mean: a weight of 1 everywhere is exactly :func:`frame_l1`."""
    w = weight.unsqueeze(-3).to(fake.dtype)
    return ((fake - resize_like(real, fake)).abs() * w).mean() / w.mean().clamp_min(1e-12)


# VGG-19 layers and weights of the perceptual loss (pix2pixHD's choice).
PERCEPTUAL_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PERCEPTUAL_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class PerceptualLoss(nn.Module):
    """Eq. 7: ``sum_l w_l * mean |psi_l(real) - psi_l(fake)|`` over VGG-19 layers ``psi_l``.

    ``weights``: a local ImageNet VGG-19 file (see ``models/vgg.py``); without one the
    VGG keeps a fixed random Kaiming init. A random-feature perceptual loss is still a
    useful multi-scale feature-matching loss: random conv + ReLU + pooling stacks
    respond to local structure (edges, textures) at growing receptive fields, so it
    penalises structural differences an L1 on pixels blurs over -- just without
    ImageNet's semantic prior. The VGG is frozen; gradients reach only the generator.
    ``width_div`` narrows the VGG for cheap test configs. Frames ``[..., 3, H, W]``.
    """

    def __init__(self, weights: str | None = None, layers: tuple[str, ...] = PERCEPTUAL_LAYERS,
                 layer_weights: tuple[float, ...] = PERCEPTUAL_WEIGHTS, width_div: int = 1) -> None:
        super().__init__()
        if len(layers) != len(layer_weights):
            raise ValueError(f"{len(layers)} layers but {len(layer_weights)} layer weights")
        self.vgg = VGGFeatures(layers, weights, width_div)
        self.layer_weights = tuple(layer_weights)

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        C, H, W = fake.shape[-3:]
        real = resize_like(real, fake)
        x = torch.cat([fake.reshape(-1, C, H, W), real.reshape(-1, C, H, W)])  # one VGG pass
        n = x.shape[0] // 2
        total = fake.new_zeros(())
        for w, f in zip(self.layer_weights, self.vgg(x), strict=True):
            total = total + w * (f[:n] - f[n:]).abs().mean()
        return total
