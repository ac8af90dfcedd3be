"""The audio-video discriminator's PatchGAN form and feature matching."""

from __future__ import annotations

import pytest
import torch

from letsplay.models import discriminator as dm
from letsplay.models.presets import preset
from letsplay.models.train import stu_discriminator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _patch_d(layers: int = 3) -> dm.AudioVideoDiscriminator:
    torch.manual_seed(0)
    cfg = dm.DiscriminatorConfig(base_channels=8, max_channels=16, layers=layers, audio_channels=8, audio_layers=2,
                              audio_features=16, hidden=16, patch=True)
    return dm.AudioVideoDiscriminator(cfg, preset("tiny", "cello").audio)


def test_patch_logits_are_local_and_hear_the_audio() -> None:
    """A logit per patch; changing one corner of the frame changes only the patches that see
    it (each sees ``receptive_field`` pixels); changing the audio changes every patch."""
    d = _patch_d().eval()
    audio = preset("tiny", "cello").audio
    frame = torch.rand(2, 3, 64, 64)
    window = torch.rand(2, audio.n_bins, audio.window_columns)
    with torch.no_grad():
        base = d(frame, window)
        assert base.shape == (2, 8, 8)
        poked = frame.clone()
        poked[:, :, :4, :4] += 0.5  # the top-left 4 x 4 pixels
        moved = (d(poked, window) - base).abs()
        louder = (d(frame, window * 3.0) - base).abs()
    reach = d.cfg.receptive_field()  # 32 px: patches whose field lies past it never see the corner
    assert reach == 32 and float(moved[:, 0, 0].min()) > 0
    stride = 64 // 8
    far = (reach // 2 + 4) // stride + 1
    assert float(moved[:, far:, :].max()) == 0.0 and float(moved[:, :, far:].max()) == 0.0
    assert bool((louder > 0).all())
    assert stu_discriminator(patch=True).receptive_field() == 64


def test_patch_discriminator_learns_real_from_blurred() -> None:
    """Trained with Eq. 6 (mismatched audio included) on sharp frames against the same frames
    blurred, the patch discriminator tells them apart on frames it did not train on, patch by
    patch; the generator's loss then falls as its frames sharpen."""
    d = _patch_d()
    audio = preset("tiny", "cello").audio
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sharp = (torch.rand(n, 3, 32, 32, generator=gen) > 0.5).float()  # hard-edged texture
        blurred = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2)
        return sharp, blurred, torch.rand(n, audio.n_bins, audio.window_columns, generator=gen)

    for _ in range(60):
        real, fake, w = batch(4)
        loss = dm.d_loss(d, real, fake, w, dm.mismatched(w))["d"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake, w = batch(4)
    with torch.no_grad():
        lr, lf = d(real, w), d(fake, w)
    assert float((lr > lf).float().mean()) > 0.95
    with torch.no_grad():
        assert float(dm.g_adv_loss(d, real, w)) < float(dm.g_adv_loss(d, fake, w))


def test_feature_matching_pulls_the_fake_toward_the_real() -> None:
    """Zero for the real frames themselves, positive otherwise, gradients to the generated
    frame only (the real side is a target, D frozen)."""
    d = _patch_d()
    real = torch.rand(2, 3, 32, 32)
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        assert float(dm.feature_matching_loss(d, real, real)) == 0.0
    with dm.frozen(d):
        fm = dm.feature_matching_loss(d, real, fake)
        fm.backward()
    assert float(fm.detach()) > 0 and fake.grad is not None and float(fake.grad.abs().sum()) > 0
    assert all(p.grad is None for p in d.parameters())
    feats = d.features(real)
    assert len(feats) == d.cfg.layers + 1 and feats[-1].shape[-1] == 32 // 2 ** d.cfg.layers
    # the training step's one pass of D gives both, as computed apart
    audio = preset("tiny", "cello").audio
    w = torch.rand(2, audio.n_bins, audio.window_columns)
    with torch.no_grad():
        both = dm.generator_losses(d, fake, w, real)
        assert torch.allclose(both["adv"], dm.g_adv_loss(d, fake, w))
        assert torch.allclose(both["fm"], dm.feature_matching_loss(d, real, fake))
        assert set(dm.generator_losses(d, fake, w)) == {"adv"}
