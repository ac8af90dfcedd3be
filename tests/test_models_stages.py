"""Stages and the Performer: streaming parity, state naming, causality, gradient routing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from letsplay.models import losses
from letsplay.models.blocks import UpConv
from letsplay.models.coarse import CoarseVideoGenerator
from letsplay.models.discriminator import (
    AudioVideoDiscriminator,
    DiscriminatorConfig,
    d_loss,
    frozen,
    g_adv_loss,
    mismatched,
)
from letsplay.models.features import frame_column, frame_windows
from letsplay.models.keypoints import KeypointPredictor
from letsplay.models.performer import Performer, PerformerState
from letsplay.models.presets import ABLATIONS, ablate, preset
from letsplay.models.state import StateError
from letsplay.models.stepping import unroll
from letsplay.models.stu import StructuredTemporalUNet

TOL = 1e-5
B, T = 2, 5


def _windows(cfg, b: int = B, t: int = T, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, cfg.audio.n_bins, cfg.audio.window_columns, generator=g) * 3.0


def _model(cfg) -> Performer:
    torch.manual_seed(0)
    return Performer(cfg)


def _assert_close(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        if x is None:
            assert y is None
            continue
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= TOL


# --------------------------------------------------------------------------- per stage


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 128, 8, 8), (1, 3, 1, 1)])
def test_upconv_equals_upsample_then_conv(shape: tuple[int, int, int, int]) -> None:
    """The sub-pixel UpConv is nearest-2x + 3x3 conv + LeakyReLU: values, borders and gradients."""
    torch.manual_seed(0)
    B, cin, h, w = shape
    m = UpConv(cin, 8)
    nn.init.normal_(m[0].bias)  # a nonzero bias: every phase must get it once
    x = torch.randn(B, cin, h, w, requires_grad=True)
    fast, ref = m(x), m.direct(x)
    assert fast.shape == ref.shape == (B, 8, 2 * h, 2 * w)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad(fast, [x, m[0].weight, m[0].bias], g)
    gb = torch.autograd.grad(ref, [x, m[0].weight, m[0].bias], g)
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert list(m.state_dict()) == ["0.weight", "0.bias"]  # checkpoints keep their keys
    with torch.no_grad():  # inference reuses the folded kernels until the weights change
        assert torch.allclose(m(x), ref, atol=1e-5, rtol=1e-5)
        m[0].weight.mul_(-0.5)
        assert torch.allclose(m(x), m.direct(x), atol=1e-5, rtol=1e-5)


def test_khp_step_equals_forward() -> None:
    cfg = preset("tiny")
    torch.manual_seed(0)
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument)
    w = _windows(cfg)
    seq, _ = khp(w)
    state = khp.init_state(B)
    for t in range(T):
        o, state = khp.step(w[:, t], state)
        _assert_close(o, (seq.keypoints[:, t], seq.heatmap[:, t], seq.motion[:, t]))
    assert seq.keypoints.shape == (B, T, 67, 2)
    assert seq.heatmap.shape == (B, T, 7, *cfg.work_size)
    assert set(state.to_dict()) == {"lstm_h", "lstm_c", "enc.history", "direction", "onset_prev", "travel",
                                    "onset_enc.history", "held", "fingering", "pitch_enc.history", "rest"}
    paper = KeypointPredictor(preset("paper").khp, cfg.audio, cfg.work_size)  # the paper's KP: LSTM state only
    assert set(paper.init_state(1).to_dict()) == {"lstm_h", "lstm_c"}


def test_khp_starts_at_mean_pose_and_set_mean_pose() -> None:
    cfg = preset("tiny", "trombone")
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, "trombone")
    o, _ = khp(_windows(cfg))
    assert torch.allclose(o.keypoints, khp.mean_pose.expand_as(o.keypoints))
    khp.set_mean_pose(torch.full((67, 2), 0.3))
    o, _ = khp(_windows(cfg))
    assert torch.allclose(o.keypoints, torch.full_like(o.keypoints, 0.3))
    with pytest.raises(ValueError, match="67"):
        khp.set_mean_pose(torch.zeros(25, 2))


def test_cvg_step_equals_forward_with_noise() -> None:
    cfg = preset("tiny")
    torch.manual_seed(0)
    cvg = CoarseVideoGenerator(cfg.cvg, cfg.audio, cfg.work_size)
    w = _windows(cfg)
    z = torch.randn(B, T, cfg.cvg.z_dim)
    seq, final = cvg(w, z=z)
    outs, state = unroll(lambda win, zz, s: cvg.step(win, s, zz), cvg.init_state(B), (w, z))
    for t in range(T):
        assert (outs[:, t] - seq[:, t]).abs().max() <= TOL
    assert seq.shape == (B, T, 3, *cvg.frame_size) and seq.abs().max() <= 1
    assert torch.equal(state.prev_frame, seq[:, -1])
    assert set(final.to_dict()) == {"lstm_h", "lstm_c", "prev_frame"}
    # z = None means zeros, and z matters
    a, _ = cvg(w)
    b, _ = cvg(w, z=torch.zeros_like(z))
    assert torch.equal(a, b) and not torch.allclose(a, seq)


@pytest.mark.parametrize("variant", [None, "no_gru", "no_gcn", "no_stu"])
def test_stu_step_equals_forward(variant: str | None) -> None:
    cfg = preset("tiny")
    stu_cfg = cfg.stu if variant is None else ablate(cfg, variant).stu
    torch.manual_seed(0)
    stu = StructuredTemporalUNet(stu_cfg, cfg.audio, cfg.work_size, heatmap_channels=7)
    H, W = cfg.work_size
    coarse = torch.rand(B, T, 3, H, W) * 2 - 1
    hm = torch.rand(B, T, 7, H, W)
    kp = torch.rand(B, T, 67, 2)
    w = _windows(cfg)
    seq, _ = stu(coarse, hm, kp, w)
    outs, _ = unroll(stu.step, stu.init_state(B), (coarse, hm, kp, w))
    for t in range(T):
        assert (outs[:, t] - seq[:, t]).abs().max() <= TOL
    names = set(stu.init_state(B).to_dict())
    assert names == ({"gru_h"} if stu_cfg.use_gru else set())


def test_stu_gcn_uses_keypoints_and_gru_carries_time() -> None:
    cfg = preset("tiny")
    torch.manual_seed(0)
    stu = StructuredTemporalUNet(cfg.stu, cfg.audio, cfg.work_size, heatmap_channels=7)
    H, W = cfg.work_size
    c, hm, w = torch.rand(1, 3, H, W), torch.rand(1, 7, H, W), _windows(cfg, 1, 1)[:, 0]
    s0 = stu.init_state(1)
    a, s1 = stu.step(c, hm, torch.full((1, 67, 2), 0.2), w, s0)
    b, _ = stu.step(c, hm, torch.full((1, 67, 2), 0.8), w, s0)
    assert not torch.allclose(a, b)  # keypoints move the GCN features
    a2, _ = stu.step(c, hm, torch.full((1, 67, 2), 0.2), w, s1)
    assert not torch.allclose(a, a2)  # the same input with carried state gives a new frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cvg_feedback_loop_is_contractive_at_init(seed: int) -> None:
    """The fed-back frame must not amplify tiny state differences (float rounding between
    torch and an exported graph) over time in an untrained model."""
    cfg = preset("tiny")
    torch.manual_seed(seed)
    cvg = CoarseVideoGenerator(cfg.cvg, cfg.audio, cfg.work_size).eval()
    w = _windows(cfg, b=1, t=30, seed=seed) * 2
    s1 = cvg.init_state(1)
    s2 = s1.map(lambda t: t + 1e-4 * torch.randn_like(t))
    with torch.no_grad():
        for t in range(30):
            a, s1 = cvg.step(w[:, t], s1)
            b, s2 = cvg.step(w[:, t], s2)
    assert (a - b).abs().max() < 1e-4


# --------------------------------------------------------------------------- Performer


VARIANTS = [None, *ABLATIONS]


@pytest.mark.parametrize("variant", VARIANTS)
def test_performer_step_equals_forward(variant: str | None) -> None:
    cfg = preset("tiny") if variant is None else ablate(preset("tiny"), variant)
    model = _model(cfg)
    w = _windows(cfg)
    z = torch.randn(B, T, cfg.cvg.z_dim)
    seq, final = model(w, z=z)
    state = model.init_state(B)
    for t in range(T):
        o, state = model.step(w[:, t], state, z[:, t])
        _assert_close(o, [None if x is None else x[:, t] for x in seq])
    _assert_close(state.to_dict().values(), final.to_dict().values())
    assert seq.frame.shape == (B, T, 3, cfg.video.height, cfg.video.width)
    assert seq.frame.abs().max() <= 1.0


def _random_chunks(seed: int, total: int = 11) -> list[int]:
    g, out = torch.Generator().manual_seed(seed), []
    while sum(out) < total:
        out.append(min(int(torch.randint(1, 5, (1,), generator=g)), total - sum(out)))
    return out


@pytest.mark.parametrize("chunks", [[1] * 7, [2, 2, 2, 1], [7], _random_chunks(0), _random_chunks(1)])
def test_performer_chunked_equals_whole(chunks: list[int]) -> None:
    cfg = dataclasses.replace(preset("tiny"), stu=dataclasses.replace(preset("tiny").stu, out_upsample=2))
    cfg = dataclasses.replace(cfg, cvg=dataclasses.replace(cfg.cvg, scale=2))
    model = _model(cfg)
    w = _windows(cfg, t=sum(chunks))
    whole, _ = model(w)
    state, t0, parts = None, 0, []
    for n in chunks:
        o, state = model(w[:, t0:t0 + n], state)
        parts.append(o.frame)
        t0 += n
    assert (torch.cat(parts, 1) - whole.frame).abs().max() <= TOL
    assert whole.frame.shape[-2:] == (32, 32) and whole.coarse.shape[-2:] == (8, 8)


def test_performer_state_names_round_trip() -> None:
    model = _model(preset("tiny"))
    state = model.init_state(3)
    d = state.to_dict()
    assert set(d) == {"khp.lstm_h", "khp.lstm_c", "khp.enc.history", "khp.direction", "khp.onset_prev", "khp.travel",
                      "khp.onset_enc.history", "khp.held", "khp.fingering", "khp.pitch_enc.history", "khp.rest",
                      "cvg.lstm_h", "cvg.lstm_c", "cvg.prev_frame", "stu.gru_h"}
    back = PerformerState.from_dict(d)
    assert all(torch.equal(d[k], v) for k, v in back.to_dict().items())
    w = _windows(preset("tiny"), b=3, t=1)[:, 0]
    a, _ = model.step(w, state)
    b, _ = model.step(w, back)
    assert torch.equal(a.frame, b.frame)
    assert torch.equal(model.state_from_dict(d).stu.gru_h, d["stu.gru_h"])
    with pytest.raises(StateError, match="missing"):
        model.state_from_dict({k: v for k, v in d.items() if k != "stu.gru_h"})
    with pytest.raises(StateError, match="missing"):
        PerformerState.from_dict({k: v for k, v in d.items() if k != "cvg.prev_frame"})
    with pytest.raises(StateError, match="shape"):
        model.state_from_dict({**d, "khp.lstm_h": torch.zeros(3, 5)})
    with pytest.raises(StateError, match="unexpected"):
        PerformerState.from_dict({**d, "stu.other": d["stu.gru_h"]})
    # an ablated model's state lacks the ablated parts' names
    no_cvg = _model(ablate(preset("tiny"), "no_cvg")).init_state(1).to_dict()
    assert set(no_cvg) == {"khp.lstm_h", "khp.lstm_c", "khp.enc.history", "khp.direction", "khp.onset_prev",
                           "khp.travel", "khp.onset_enc.history", "khp.held", "khp.fingering", "khp.pitch_enc.history",
                           "khp.rest", "stu.gru_h"}
    # state is frozen: a step cannot mutate it in place
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.stu = None  # type: ignore[misc]


def test_performer_is_causal() -> None:
    """Frame t's output does not change when audio after frame t's window changes."""
    cfg = preset("tiny")
    model = _model(cfg)
    n_frames, t = 8, 4
    cols = frame_column(n_frames - 1, cfg.audio, cfg.video) + 1
    g = torch.Generator().manual_seed(3)
    cqt = torch.rand(1, cfg.audio.n_bins, cols, generator=g)
    w1 = frame_windows(cqt, cfg.audio, cfg.video, n_frames).transpose(0, 1)  # [1, T, 84, 87]
    cqt2 = cqt.clone()
    last = frame_column(t, cfg.audio, cfg.video)
    cqt2[..., last + 1:] = torch.rand(cqt2[..., last + 1:].shape, generator=g) * 5
    w2 = frame_windows(cqt2, cfg.audio, cfg.video, n_frames).transpose(0, 1)
    with torch.no_grad():
        a, _ = model(w1)
        b, _ = model(w2)
    assert torch.equal(a.frame[:, : t + 1], b.frame[:, : t + 1])
    assert not torch.allclose(a.frame[:, t + 1:], b.frame[:, t + 1:])


# --------------------------------------------------------------------------- gradients


def _grads(module: torch.nn.Module) -> dict[str, bool]:
    """name -> has a nonzero gradient."""
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def _reached(model: torch.nn.Module) -> set[str]:
    """Top-level submodules whose parameters got a nonzero gradient."""
    return {n.split(".")[0] for n, g in _grads(model).items() if g}


def _real(cfg, t: int = 3):
    g = torch.Generator().manual_seed(7)
    frames = torch.rand(B, t, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1
    kp = torch.rand(B, t, 67, 2, generator=g)
    return frames, kp


def test_each_loss_reaches_only_its_stage() -> None:
    cfg = preset("tiny")
    model = _model(cfg)
    w = _windows(cfg, t=3)
    frames, kp = _real(cfg)

    def run(loss_fn) -> set[str]:
        model.zero_grad(set_to_none=True)
        out, _ = model(w, z=torch.randn(B, 3, cfg.cvg.z_dim))
        loss_fn(out).backward()
        return _reached(model)

    assert run(lambda o: model.khp.loss(o.keypoints, kp)["kp"]) == {"khp"}
    assert run(lambda o: losses.keypoint_l2(o.keypoints, kp)) == {"khp"}
    assert run(lambda o: losses.frame_l1(o.coarse, frames)) == {"cvg"}
    assert run(lambda o: losses.frame_l1(o.frame, frames)) == {"stu"}
    perc = losses.PerceptualLoss(width_div=16)
    assert run(lambda o: perc(o.frame, frames)) == {"stu"}
    assert all(p.grad is None for p in perc.parameters())


def test_end_to_end_losses_reach_all_stages() -> None:
    cfg = dataclasses.replace(preset("tiny"), end_to_end=True)
    cfg = dataclasses.replace(cfg, khp=dataclasses.replace(cfg.khp, heatmap_radius=3.0))
    model = _model(cfg)
    torch.nn.init.normal_(model.khp.fc.weight, std=0.01)  # zero-init FC would block the LSTM's grads
    out, _ = model(_windows(cfg, t=3))
    losses.frame_l1(out.frame, _real(cfg)[0]).backward()
    assert _reached(model) == {"khp", "cvg", "stu"}
    g = _grads(model.khp)
    assert g["motion.columns.0.weight"] and g["lstm.weight_ih"]


def test_dlt_loss_switch() -> None:
    cfg = preset("tiny")
    kp, real = torch.rand(2, 67, 2), torch.rand(2, 67, 2)
    on = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size).loss(kp, real)
    off_cfg = ablate(cfg, "kp_no_dlt").khp
    off = KeypointPredictor(off_cfg, cfg.audio, cfg.work_size).loss(kp, real)
    assert set(on) == {"kp_coord", "kp_vis", "kp"} and set(off) == {"kp_coord", "kp"}
    assert torch.allclose(on["kp"], on["kp_coord"] + on["kp_vis"])
    assert torch.equal(off["kp"], off["kp_coord"])
    conf = torch.ones(2, 67)
    conf[:, 10:] = 0  # missing keypoints do not count
    real2 = real.clone()
    real2[:, 10:] = 0.9
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size)
    assert torch.allclose(khp.loss(kp, real, conf)["kp"], khp.loss(kp, real2, conf)["kp"])


def test_adversarial_losses_reach_the_right_side() -> None:
    cfg = preset("tiny")
    model = _model(cfg)
    d = AudioVideoDiscriminator(DiscriminatorConfig(base_channels=8, max_channels=16, layers=3,
                                                    audio_channels=8, audio_layers=2, audio_features=8,
                                                    hidden=16), cfg.audio)
    w = _windows(cfg, t=2)
    real, _ = _real(cfg, t=2)
    out, _ = model(w)
    assert d(out.frame, w).shape == (B, 2)
    dl = d_loss(d, real, out.frame, w, mismatched(w))
    assert set(dl) == {"d_real", "d_fake", "d_mismatch", "d"}
    dl["d"].backward()
    assert _reached(model) == set() and any(_grads(d).values())
    d.zero_grad(set_to_none=True)
    out, _ = model(w)
    with frozen(d):
        g_adv_loss(d, out.frame, w).backward()
    assert _reached(model) == {"stu"}
    assert all(p.grad is None for p in d.parameters()) and all(p.requires_grad for p in d.parameters())
    assert mismatched(w[:1]) is None
    assert set(d_loss(d, real[:1], out.frame[:1], w[:1])) == {"d_real", "d_fake", "d"}
