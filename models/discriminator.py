"""The audio-video pair discriminator and the adversarial losses (paper III-C, Eqs. 5-6).

The discriminator ``D(V, A)`` scores whether a video frame and a CQT window belong
together: a strided CNN reads the frame, a 1D-CNN (:class:`AudioEncoder`) the window,
and an MLP reads both features and gives one logit. It is trained (Eq. 6) to accept
real pairs and to reject both generated frames and *mismatched* real pairs (a real
frame with another clip's audio, as in text-to-image GAN-CLS), so the STU must produce
frames that fit the music, not just realistic ones.

Loss form: the paper writes Eqs. 5-6 with ``log D``. We use the standard
non-saturating BCE-with-logits form, numerically stable on logits:

* D (Eq. 6): ``BCE(D(V_real, A), 1) + 1/2 [BCE(D(G, A), 0) + BCE(D(V_real, A'), 0)]``
  (``A'`` mismatched; the fake term alone when no mismatched audio is available);
* G (Eq. 5): ``BCE(D(G, A), 1) = -log D(G, A)``, whose gradient does not vanish while
  D confidently rejects G early in training.

**PatchGAN** (``DiscriminatorConfig.patch``, beyond the paper): pooling the whole frame into
one logit lets D judge the picture as a whole and miss what is wrong in a small part of it
(a blurred bow, a smeared hand). The patch form keeps D's frame CNN fully convolutional and
gives a logit per patch (each sees about ``receptive_field`` pixels), conditioned on the
audio by projection: ``logit[h, w] = psi(v[:, h, w]) + <embed(a), v[:, h, w]>`` (Miyato &
Koyama's projection discriminator, with the CQT window's feature as the condition), so a
patch is judged for looking real *and* fitting the music. The same losses apply, averaged
over the patches. **Feature matching** (:func:`feature_matching_loss`, pix2pixHD): the L1
distance between D's intermediate frame features of the real and the generated frame, a
steadier signal for the generator than the logit alone.

D is training-only and stateless (one frame at a time), so it has no State.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.blocks import AudioEncoder, act, conv, kaiming_init
from letsplay.models.config import DictConfig
from letsplay.models.spec import AudioSpec


@dataclass(frozen=True)
class DiscriminatorConfig(DictConfig):
    base_channels: int = 64  # frame CNN width at the first layer, doubled per layer
    max_channels: int = 512  # cap on the doubling
    layers: int = 5  # stride-2 conv layers on the frame
    audio_channels: int = 128  # audio encoder (1D-CNN) width
    audio_layers: int = 3  # audio encoder stride-2 conv layers
    audio_features: int = 256  # audio feature size
    hidden: int = 256  # joint MLP width (the global form)
    # PatchGAN: a logit per patch of the frame, conditioned on the audio by projection (the
    # joint MLP unused); False: the frame's features pooled into one logit, as in the paper
    patch: bool = False

    def receptive_field(self) -> int:
        """Pixels of the frame each patch logit sees (a side; the patch form)."""
        rf, jump = 1, 1
        for i in range(self.layers):
            rf += ((4 if i == 0 else 3) - 1) * jump
            jump *= 2
        return rf + (3 - 1) * jump  # the last, stride-1 layer


class AudioVideoDiscriminator(nn.Module):
    """``D(frame [..., 3, H, W], window [..., n_bins, W_cqt]) -> logits [...]`` (the patch
    form: ``[..., h, w]``, a logit per patch)."""

    def __init__(self, cfg: DiscriminatorConfig, audio: AudioSpec) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = 3
        for i in range(cfg.layers):
            cout = min(cfg.base_channels * 2**i, cfg.max_channels)
            layers += [conv(cin, cout, 4 if i == 0 else 3, 2), act()]
            cin = cout
        if cfg.patch:  # one more layer at stride 1: each patch's features see their neighbours
            layers += [conv(cin, cin, 3, 1), act()]
        self.frame_enc = nn.Sequential(*layers)
        self.audio_enc = AudioEncoder(audio, cfg.audio_channels, cfg.audio_layers, cfg.audio_features)
        if cfg.patch:
            self.psi = nn.Conv2d(cin, 1, 1)  # how real a patch looks
            self.embed = nn.Linear(cfg.audio_features, cin)  # the projection: does it fit the music
            self.mlp = None
        else:
            self.mlp = nn.Sequential(nn.Linear(cin + cfg.audio_features, cfg.hidden), act(), nn.Linear(cfg.hidden, 1))
        kaiming_init(self)

    def features(self, frame: Tensor) -> list[Tensor]:
        """The frame CNN's activations after each layer, ``[N, c, h, w]`` each (feature matching)."""
        x = frame.reshape(-1, *frame.shape[-3:])
        out = []
        for layer in self.frame_enc:
            x = layer(x)
            if not isinstance(layer, nn.Conv2d):  # after each activation
                out.append(x)
        return out

    def score(self, frame: Tensor, window: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(the logits :meth:`forward` gives, the frame features :meth:`features` gives), from
        one pass over the frame."""
        lead = frame.shape[:-3]
        feats = self.features(frame)
        v = feats[-1]  # [N, c, h, w]
        a = self.audio_enc(window.reshape(-1, *window.shape[-2:]))  # [N, audio_features]
        if self.mlp is None:
            proj = (self.embed(a)[:, :, None, None] * v).sum(dim=1) / v.shape[1] ** 0.5  # [N, h, w]
            return (self.psi(v)[:, 0] + proj).reshape(*lead, *v.shape[-2:]), feats
        return self.mlp(torch.cat([v.mean(dim=(2, 3)), a], dim=1)).reshape(lead), feats  # global pool

    def forward(self, frame: Tensor, window: Tensor) -> Tensor:
        return self.score(frame, window)[0]


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def mismatched(window: Tensor) -> Tensor | None:
    """Audio that does not belong to each sample: the batch rolled by one (needs B >= 2)."""
    return window.roll(1, dims=0) if window.shape[0] >= 2 else None


def d_loss(d: nn.Module, real: Tensor, fake: Tensor, window: Tensor,
           wrong_window: Tensor | None = None) -> dict[str, Tensor]:
    """Eq. 6 (non-saturating BCE form): frames ``[..., 3, H, W]``, windows ``[..., F, T]``.
    ``fake`` is detached, so only D gets gradients. ``wrong_window``: mismatched audio
    for the real frames (see :func:`mismatched`); None drops that term."""
    out = {"d_real": _bce(d(real, window), 1.0), "d_fake": _bce(d(fake.detach(), window), 0.0)}
    if wrong_window is not None:
        out["d_mismatch"] = _bce(d(real, wrong_window), 0.0)
        out["d"] = out["d_real"] + 0.5 * (out["d_fake"] + out["d_mismatch"])
    else:
        out["d"] = out["d_real"] + out["d_fake"]
    return out


def g_adv_loss(d: nn.Module, fake: Tensor, window: Tensor) -> Tensor:
    """Eq. 5, non-saturating: ``-log D(G, A)``. Wrap in :func:`frozen` (d) so the
    backward pass leaves D's gradients alone."""
    return _bce(d(fake, window), 1.0)


def _matching(got: list[Tensor], want: list[Tensor]) -> Tensor:
    return torch.stack([F.l1_loss(g, w) for g, w in zip(got, want, strict=True)]).mean()


def feature_matching_loss(d: AudioVideoDiscriminator, real: Tensor, fake: Tensor) -> Tensor:
    """pix2pixHD's feature matching: the mean L1 distance between D's frame features of the
    real and the generated frames, layer by layer, averaged over the layers. The real side
    is a target (no gradient); wrap in :func:`frozen` (d) so D's gradients stay alone."""
    with torch.no_grad():
        want = d.features(real)
    return _matching(d.features(fake), want)


def generator_losses(d: AudioVideoDiscriminator, fake: Tensor, window: Tensor,
                     real: Tensor | None = None) -> dict[str, Tensor]:
    """``{"adv": Eq. 5}`` (:func:`g_adv_loss`) and, given the real frames, ``"fm"``
    (:func:`feature_matching_loss`), from one pass of D over the generated frames. Wrap in
    :func:`frozen` (d)."""
    logits, got = d.score(fake, window)
    out = {"adv": _bce(logits, 1.0)}
    if real is not None:
        with torch.no_grad():
            want = d.features(real)
        out["fm"] = _matching(got, want)
    return out


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on all of ``module``'s parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)
