"""The layered warp: its transforms are exact, it reproduces the reference at the rest pose,
moves layers with their keypoints, and on real synthetic clips draws the performer's new
pose better than the still picture does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from letsplay.models.evaluate import _psnr_of_mse, moving_mask, psnr, still_picture
from letsplay.models.warp import (
    LABELS,
    SLIDE_OUTER,
    LayeredWarp,
    bone_inverse,
    fit_cello_sway,
    reference_from_clip,
    rotation_inverse,
    similarity_inverse,
    split_slide,
    upper_body_angle,
)


def _apply(T: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (T[..., :2] @ x[..., None])[..., 0] + T[..., 2]


def test_similarity_recovers_a_planted_transform():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(12, 2, generator=g) * 200
    ang, s, t = 0.4, 1.3, torch.tensor([7.0, -3.0])
    R = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    cur = (s * ref @ R.T + t)[None]  # the frame: the reference turned, scaled and shifted
    T = similarity_inverse(ref, cur)
    assert torch.allclose(_apply(T[:, None], cur), ref[None], atol=1e-3)


def test_bone_turns_and_stretches_along_the_bone_only():
    ref = torch.tensor([[[10.0, 10.0], [10.0, 50.0]]])  # 40 px, pointing down
    cur = torch.tensor([[[100.0, 100.0], [120.0, 100.0]]])  # 20 px, pointing right
    T = bone_inverse(ref[0], cur)
    ends = _apply(T[:, None], cur)
    assert torch.allclose(ends, ref, atol=1e-4)
    side = torch.tensor([[[110.0, 106.0]]])  # mid-bone, 6 px to one side
    back = _apply(T[:, None], side)[0, 0]
    assert abs(float(back[1]) - 30.0) < 1e-4  # mid-bone in the reference
    assert abs(abs(float(back[0]) - 10.0) - 6.0) < 1e-4  # still 6 px from the bone: width kept


def test_rotation_keeps_its_centre_and_turns_back():
    c = torch.tensor([50.0, 200.0])
    T = rotation_inverse(c, torch.tensor([0.3]))
    assert torch.allclose(_apply(T, c[None]), c[None], atol=1e-5)
    p = c + torch.tensor([0.0, -100.0])
    turned = c + torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]]) @ (p - c)
    assert torch.allclose(_apply(T, turned[None]), p[None], atol=1e-4)


def _toy(instrument="trombone", H=64, W=64):
    """A reference with three layers drawn as blocks, its keypoints inside them."""
    g = torch.Generator().manual_seed(1)
    rgb, plate = torch.rand(3, H, W, generator=g), torch.rand(3, H, W, generator=g)
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[10:30, 20:40] = LABELS["torso"]
    labels[40:50, 10:30] = LABELS["right_hand"]
    labels[30:40, 35:45] = LABELS["left_hand"]
    kp = torch.rand(67, 2, generator=g) * 0.4 + 0.3
    return LayeredWarp(instrument, (H, W)).set_reference(rgb, plate, labels, kp), rgb, plate, labels, kp


def _ring(mask: torch.Tensor) -> torch.Tensor:
    """The one-pixel background ring around a mask (8-neighbourhood)."""
    grown = torch.nn.functional.max_pool2d(mask.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    return grown & ~mask


def test_rest_pose_gives_back_the_reference_over_the_plate():
    warp, rgb, plate, labels, kp = _toy()
    out, rank = warp(kp[None])
    inside = labels > 0
    drawn = inside | _ring(inside)  # a part's outline travels with it
    expect = torch.where(drawn, rgb, plate)
    assert torch.allclose(out[0], expect, atol=1e-5)
    assert rank.shape == (1, 64, 64)
    assert bool((rank[0] > 0).eq(drawn).all())
    for k, lay in enumerate(warp.rig):  # each part is drawn from its own layer
        own = labels == lay.label
        if own.any():
            assert bool((rank[0][own] == k + 1).all()), lay.name


def test_a_shifted_pose_moves_every_layer_by_whole_pixels():
    warp, rgb, plate, labels, kp = _toy()
    shift = torch.tensor([8 / 64, 4 / 64])
    out, _ = warp((kp + shift)[None])
    moved = torch.roll(labels, (4, 8), (0, 1)) > 0
    want = torch.roll(rgb, (4, 8), (1, 2))
    assert moved.sum() > 500
    assert torch.allclose(out[0][:, moved], want[:, moved], atol=1e-4)
    away = ~(moved | _ring(moved))
    assert torch.allclose(out[0][:, away], plate[:, away], atol=1e-4)  # the plate stays


def test_a_half_pixel_shift_blends_the_edges_and_the_frame_is_continuous_in_the_keypoints():
    """Half a pixel across: every edge pixel is half the part, half what lies behind it
    (anti-aliased, as the renderer draws), and a shift 1e-4 px either way changes the frame
    by about as little -- there is no discrete choice in it whose flip would move a whole
    pixel (the exported graph and torch then draw the same frame)."""
    warp, rgb, plate, labels, kp = _toy()
    half = torch.tensor([0.5 / 64, 0.0])
    out, _ = warp((kp + half)[None])
    torso = labels == LABELS["torso"]
    rows = torso.any(1).nonzero()[:, 0]
    r0, r1 = int(rows.min()) + 1, int(rows.max())  # away from the torso's top and bottom outline
    c = int(torso.any(0).nonzero()[:, 0].min()) - 1  # the reference's outline column left of the torso
    # the frame's column c samples the reference half-way between columns c - 1 (no part) and c
    # (the outline): half covered, by the mean of the two colours, over the plate
    mean = 0.5 * (rgb[:, r0:r1, c - 1] + rgb[:, r0:r1, c])
    want = 0.5 * mean + 0.5 * plate[:, r0:r1, c]
    assert torch.allclose(out[0][:, r0:r1, c], want, atol=1e-5)
    # and inside the torso, columns c + 2 on: the mean of two torso columns, fully covered
    assert torch.allclose(out[0][:, r0:r1, c + 2], 0.5 * (rgb[:, r0:r1, c + 1] + rgb[:, r0:r1, c + 2]), atol=1e-5)
    eps = torch.tensor([1e-4 / 64, 1e-4 / 64])
    a, _ = warp((kp + half + eps)[None])
    b, _ = warp((kp + half - eps)[None])
    assert float((a - b).abs().amax()) < 2e-3


def test_pixels_out_of_reach_show_the_plate_and_the_rest_is_unchanged():
    warp, rgb, plate, labels, kp = _toy()
    pose = (kp + torch.tensor([3 / 64, -2 / 64]))[None]
    full, _ = warp(pose)
    reach = torch.zeros(64, 64, dtype=torch.bool)
    reach[:, :32] = True
    warp.set_reference(rgb, plate, labels, kp, reach=reach)
    half, rank = warp(pose)
    assert torch.allclose(half[0][:, reach], full[0][:, reach], atol=1e-6)
    assert torch.allclose(half[0][:, ~reach], plate[:, ~reach])
    assert bool((rank[0][~reach] == 0).all())
    assert (full[0][:, ~reach] - plate[:, ~reach]).abs().amax() > 0.1  # there was a part to cut


def test_a_blank_warp_refuses_a_reference_of_another_size():
    warp = LayeredWarp("trombone", (32, 32))
    assert not warp.has_reference
    with pytest.raises(ValueError, match="need"):
        warp.set_reference(torch.zeros(3, 64, 64), torch.zeros(3, 32, 32), torch.zeros(32, 32), torch.zeros(67, 2))
    with pytest.raises(ValueError, match="endpin"):
        LayeredWarp("cello", (32, 32)).set_reference(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32),
                                                     torch.full((32, 32), LABELS["instrument_body"]),
                                                     torch.zeros(67, 2))
    # a cello whose body is not a layer (a map from a video's silhouette) needs none
    LayeredWarp("cello", (32, 32)).set_reference(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32),
                                                 torch.ones(32, 32), torch.zeros(67, 2))


def test_the_warp_is_differentiable_in_the_keypoints():
    warp, rgb, *_ = _toy()
    kp = (warp.ref_kp / warp.scale + 0.01).clone().requires_grad_(True)
    out, _ = warp(kp[None])
    (out - rgb).abs().mean().backward()
    assert kp.grad is not None and kp.grad.abs().sum() > 0


def test_cello_sway_gain_is_recovered_and_turns_the_body_about_the_endpin():
    T = 200
    t = np.linspace(0, 6, T)
    body = 0.05 * np.sin(t)
    kp = np.zeros((T, 67, 2))
    kp[:, 8] = [0.5, 0.7]
    kp[:, 1] = kp[:, 8] + 0.3 * np.stack([np.cos(-np.pi / 2 + body), np.sin(-np.pi / 2 + body)], -1)
    ip = np.zeros((T, 5, 2))
    ip[:, 2] = [0.6, 0.95]
    tau = -np.pi / 2 + 0.2 - 0.7 * body
    ip[:, 4] = ip[:, 2] + 0.7 * np.stack([np.cos(tau), np.sin(tau)], -1)
    gain = fit_cello_sway(kp, ip)
    assert abs(gain + 0.7) < 1e-6
    assert abs(float(upper_body_angle(torch.from_numpy(kp[0])) - (-np.pi / 2 + body[0]))) < 1e-9


def test_the_slide_layer_splits_at_the_right_hand():
    labels = np.zeros((32, 64), np.uint8)
    labels[10:12, 4:60] = LABELS["slide"]
    kp = np.zeros((67, 2))
    kp[46] = [30.0, 11.0]  # the right hand's wrist, along the slide
    ip = np.array([[4.0, 11.0], [10.0, 5.0], [60.0, 11.0]])  # mouthpiece, bell, crook
    out = split_slide(labels, kp, ip)
    assert (out[10, 4:27] == LABELS["slide"]).all()
    assert (out[10, 29:60] == SLIDE_OUTER).all()


# --------------------------------------------------------------------------- real clips


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean per-frame PSNR, or (``mask``) PSNR pooled over the masked pixels, as ``letsplay eval``."""
    if mask is None:
        return float(psnr(a, b).mean())
    return _psnr_of_mse(float((a - b).pow(2)[mask[:, None].expand_as(a)].mean()))


@pytest.mark.parametrize("which", ["cello", "trombone"])
def test_real_clips_warp_beats_the_still_picture(which, cello_set, trombone_set):
    """Reference from one clip, poses (the real keypoints) of each other clip: the warp is
    closer to the real frames than each clip's own still picture on moving pixels, and on
    all pixels over the clips (one clip barely moves: its still picture is nearly exact)."""
    from letsplay.models.data.torch_dataset import open_sources

    clips = open_sources(cello_set if which == "cello" else trombone_set)
    assert len(clips) >= 2
    ref = reference_from_clip(clips[0])
    warp = ref.warp()
    warp_all, still_all = [], []
    for n, other in enumerate(clips[1:], 1):
        kp, _ = other.keypoints()
        real = torch.from_numpy(other.frames(0, other.n_frames)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            fake, _ = warp(torch.from_numpy(kp).float())
        still = still_picture(real)
        moving = moving_mask(real, still)
        warp_all.append(_psnr(fake, real))
        still_all.append(_psnr(still[None].expand_as(real), real))
        warp_mov, still_mov = _psnr(fake, real, moving), _psnr(still[None].expand_as(real), real, moving)
        print(f"{which} clip {n}: warp {warp_all[-1]:.2f} dB (moving {warp_mov:.2f}), still picture "
              f"{still_all[-1]:.2f} (moving {still_mov:.2f}), sway gain {ref.sway_gain:.3f}")
        assert warp_mov > still_mov + 2.0
    assert np.mean(warp_all) > np.mean(still_all)


# --------------------------------------------------------------------------- inside the Performer


def _warp_performer(clips, instrument="cello"):
    from letsplay.models.performer import Performer
    from letsplay.models.presets import ablate, preset

    torch.manual_seed(0)
    p = Performer(ablate(preset("tiny", instrument), "warp")).eval()
    p.set_reference(reference_from_clip(clips[0], (p.cfg.video.height, p.cfg.video.width)))
    return p


def test_an_untrained_warp_performer_draws_the_warp_and_keeps_it_through_save_and_load(cello_set, tmp_path):
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.performer import Performer

    p = _warp_performer(open_sources(cello_set))
    assert p.cvg is None and p.warp is not None and p.warp.has_reference
    windows = torch.rand(1, 5, p.cfg.audio.n_bins, p.cfg.audio.window_columns)
    with torch.no_grad():
        out, _ = p(windows)
    assert out.coarse.shape == out.frame.shape == (1, 5, 3, 32, 32)
    assert torch.equal(out.frame, out.coarse.clamp(-1, 1))  # the head starts at zero: the warp itself
    assert out.coarse.std() > 0.1  # a picture, not a blank
    path = tmp_path / "warp.safetensors"
    p.save(path, dtype=torch.float16)
    q = Performer.load(path)
    assert torch.equal(q.warp.ref_labels, p.warp.ref_labels)
    with torch.no_grad():
        again, _ = q(windows)
    assert (again.frame - out.frame).abs().max() < 2e-2  # fp16 storage of the reference


def test_a_warp_performer_exports_with_parity(cello_set, tmp_path):
    from letsplay.export.onnx import export_onnx, parity
    from letsplay.models.data.torch_dataset import open_sources

    p = _warp_performer(open_sources(cello_set))
    with torch.no_grad():  # a trained-looking residual: not zero
        for prm in p.stu.head.parameters():
            prm.normal_(0, 0.05)
    man = export_onnx(p, tmp_path / "x", cqt=False)
    assert "warp" in man["graphs"] and "cvg" not in man["graphs"]
    assert "mid.base" in [i["name"] for i in man["graphs"]["back"]["inputs"]]
    g = torch.Generator().manual_seed(3)
    windows = torch.rand(6, p.cfg.audio.n_bins, p.cfg.audio.window_columns, generator=g).numpy()
    worst = parity(p, tmp_path / "x", windows)
    assert max(worst.values()) <= 1e-4, worst


def test_training_a_warp_performer_takes_its_reference_from_the_data(cello_set, tmp_path):
    from letsplay.models.presets import ablate, preset
    from letsplay.models.train import TrainConfig, train

    cfg = ablate(preset("tiny", "cello"), "warp")
    res = train(cfg, TrainConfig(stage="all", steps=6, batch=2, seq_len=3, ckpt_every=6, log_every=1),
                cello_set, tmp_path / "run", progress=False)
    from letsplay.models.performer import Performer

    p = Performer.load(res.performer_path)
    assert p.warp.has_reference
    assert res.step == 6 and len(res.history) < 6  # no CVG network to train: its share of the steps is skipped
    assert not any("coarse" in h for h in res.history) and any("l1" in h for h in res.history)
    assert all(math.isfinite(v) for h in res.history for k, v in h.items() if k != "step")


def test_a_keypoint_stage_moves_from_a_cvg_performer_into_a_warp_performer(cello_set):
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.performer import CheckpointError, Performer, combine_stages
    from letsplay.models.presets import preset

    base = _warp_performer(open_sources(cello_set))
    torch.manual_seed(5)
    cvg_performer = Performer(preset("tiny", "cello"))
    out = combine_stages(base, {"khp": cvg_performer})
    for (name, a), b in zip(out.khp.state_dict().items(), cvg_performer.khp.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert out.cfg.coarse == "warp" and torch.equal(out.warp.ref_rgb, base.warp.ref_rgb)
    with pytest.raises(CheckpointError, match="khp source"):  # another instrument's KHP is refused
        combine_stages(base, {"khp": Performer(preset("tiny", "trombone"))})
