"""Training and evaluation smoke tests (tiny preset, CPU, a small synthetic dataset).

Every stage trains a few steps; an interrupted run resumed from its checkpoint gives the
same loss sequence as an uninterrupted one; evaluation scores a trained model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synth_tiny

from letsplay.models.evaluate import evaluate, held_out_clips
from letsplay.models.performer import Performer
from letsplay.models.presets import preset
from letsplay.models.train import TrainConfig, Trainer, lr_at, schedule
from letsplay.models.train_checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_tiny(tmp_path_factory.mktemp("synth") / "cello", "cello", 0.2, 6.0, 3.0)


def _cfg(**kw: object) -> TrainConfig:
    base = dict(stage="all", steps=6, stage_fractions=(1.0, 1.0, 1.0), batch=2, seq_len=3, ckpt_every=3,
                log_every=1, perc_size=32)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _losses(hist: list[dict[str, float]]) -> list[tuple[int, list[tuple[str, float]]]]:
    return [(int(h["step"]), sorted((k, v) for k, v in h.items() if k != "step")) for h in hist]


def test_schedule_and_lr() -> None:
    cfg = TrainConfig(steps=100)
    plan = schedule(cfg)
    assert [p[0] for p in plan] == ["kp", "cvg", "stu"] and plan[0][1] == 0 and plan[-1][2] == 100
    s, e = plan[0][1], plan[0][2]
    assert lr_at(cfg, s, s, e) == pytest.approx(1e-3) and lr_at(cfg, e - 1, s, e) == pytest.approx(1.25e-4)


def test_train_resume_exact_and_evaluate(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    full = Trainer(mcfg, _cfg(), dataset, tmp_path / "a", progress=False).run()
    assert full.step == 6 and len(full.history) == 6
    stages = [set(h) for h in full.history]
    assert "kp_vis" in stages[0] and "coarse" in stages[2] and {"d", "l1", "perc", "adv"} <= stages[4]

    first = Trainer(mcfg, _cfg(), dataset, tmp_path / "b", progress=False).run(stop_at=3)  # "interrupted"
    assert latest_checkpoint(tmp_path / "b").name == "step-0000003"
    rest = Trainer(mcfg, _cfg(), dataset, tmp_path / "b", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(full.history)  # exactly the same numbers
    a = Performer.load(tmp_path / "a" / "performer.safetensors").state_dict()
    b = Performer.load(tmp_path / "b" / "performer.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]

    with pytest.raises(ValueError, match="other training settings"):
        Trainer(mcfg, _cfg(batch=1), dataset, tmp_path / "b", progress=False).run(resume=True)

    clips = held_out_clips(dataset, "train", "cello")[:1]
    res = evaluate(Performer.load(full.performer_path), clips, max_seconds=2.0, strip=tmp_path / "s.png",
                   progress=False)
    m = res.model  # the rows and metrics themselves: tests/test_evaluate.py
    assert res.frames == 60 and math.isfinite(m.psnr) and 0 < m.ssim <= 1 and m.temporal >= 0
    assert m.kp_dist is not None and 0 <= m.kp_dist < 0.5
    assert (tmp_path / "s.png").is_file()


def test_e2e_and_ablation_stage_skip(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    from letsplay.models.presets import ablate

    r = Trainer(preset("tiny", "cello"), _cfg(stage="e2e", steps=1), dataset, tmp_path / "e2e",
                progress=False).run()
    assert {"kp", "coarse", "l1", "d"} <= set(r.history[0])
    r = Trainer(ablate(preset("tiny", "cello"), "no_cvg"), _cfg(steps=3), dataset, tmp_path / "nocvg",
                progress=False).run()
    assert r.step == 3 and len(r.history) == 2  # the CVG stage has nothing to train


def test_kp_lanes_read_clips_from_the_start_and_resume_exactly(dataset: Path, tmp_path: Path) -> None:
    """The KP stage reads each clip start to end in chunks, carrying KHP's state between a
    lane's chunks (reset at a new clip); an interrupted run resumes lanes and state exactly."""
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="kp", steps=5, batch=1, seq_len=30, ckpt_every=2)
    tr = Trainer(mcfg, cfg, dataset, tmp_path / "peek", progress=False)
    seen = [tr.lanes.next()]
    n = {c.id: c.n_frames for c in tr.dataset.clips}[seen[0]["clip"][0]]  # the first lane's clip
    assert n >= 60
    seen += [tr.lanes.next() for _ in range(n // 30)]
    assert [b["start"][0] for b in seen[: n // 30]] == list(range(0, n // 30 * 30, 30))
    assert [bool(b["reset"][0]) for b in seen] == [True] + [False] * (n // 30 - 1) + [True]
    assert len({b["clip"][0] for b in seen[: n // 30]}) == 1 and seen[-1]["start"][0] == 0

    tr = Trainer(mcfg, cfg, dataset, tmp_path / "carry", progress=False)
    tr.train_step("kp", tr.lanes.next())
    h1 = tr.kp_state.lstm_h.clone()
    assert h1.abs().sum() > 0  # carried to the lane's next chunk, not a fresh zero state

    full = Trainer(mcfg, cfg, dataset, tmp_path / "a", progress=False).run()
    first = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(stop_at=2)
    rest = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(full.history)
    assert {"kp_motion", "kp_vel"} <= set(full.history[-1])  # the motion heads learn from the notes and physics


def test_teacher_motion_trains_the_readout_on_the_real_states(dataset: Path, tmp_path: Path) -> None:
    """teacher_motion=1: every sequence's keypoint readout reads the data's real motion
    states, so the motion decoder (zero at the start) learns from the keypoint loss while
    the states still learn from their own targets."""
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    tr = Trainer(mcfg, _cfg(stage="kp", steps=2, teacher_motion=1.0), dataset, tmp_path / "t", progress=False)
    batch = tr.lanes.next()
    mt = tr._motion_teacher(batch)
    given = batch["motion_mask"] > 0
    assert torch.equal(mt[..., 2][given[..., 2]], batch["motion"][..., 2][given[..., 2]])  # the real travel
    assert torch.isnan(mt[..., [0, 5]]).all()  # never the logit channels
    logs = tr.train_step("kp", batch)
    assert math.isfinite(logs["kp"]) and logs["kp_motion"] > 0
    assert tr.model.khp.decoder[-1].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="teacher_motion"):
        _cfg(stage="kp", teacher_motion=2.0)


def test_stu_teacher_keypoints_draw_the_real_pose(dataset: Path, tmp_path: Path) -> None:
    """teacher_keypoints=1: the STU stage's frames are the STU fed the real keypoints'
    heatmaps (KHP and CVG frozen), and such a run trains."""
    torch.set_num_threads(1)
    cfg = _cfg(stage="stu", steps=2, teacher_keypoints=1.0)
    tr = Trainer(preset("tiny", "cello"), cfg, dataset, tmp_path / "t", progress=False)
    m = tr.model
    batch = tr.batches.next()
    w = batch["cqt"]
    z = tr._z(*w.shape[:2])
    with torch.no_grad():
        fake, _ = tr._stu_teacher_forward(batch, w, z)
        coarse, _ = m.cvg(w, None, z)
        up = torch.nn.functional.interpolate(coarse.flatten(0, 1), size=m.cfg.work_size, mode="bilinear",
                                             align_corners=False).unflatten(0, coarse.shape[:2])
        kp = batch["keypoints"]
        hm = m.khp.heatmap(kp, batch["confidence"] * m.khp.cfg.heatmap_alpha)
        want, _ = m.stu(up, hm, kp, w)
        pred, _ = m(w, None, z)  # KHP's own keypoints give other frames
    assert torch.allclose(fake, want, atol=1e-6)
    assert not torch.allclose(fake, pred.frame, atol=1e-4)
    r = tr.run()
    assert r.step == 2 and all(math.isfinite(v) for h in r.history for v in h.values())


def test_no_adversarial_weight_leaves_the_discriminator_alone(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tr = Trainer(preset("tiny", "cello"), _cfg(stage="stu", steps=2, adv_weight=0.0), dataset, tmp_path / "t",
                 progress=False)
    before = [p.detach().clone() for p in tr.disc.parameters()]
    r = tr.run()
    assert r.step == 2 and all("d" not in h and h.get("adv", 0.0) == 0.0 for h in r.history)
    assert all(torch.equal(a, b) for a, b in zip(before, tr.disc.parameters(), strict=True))
    assert any(h.get("l1", 0) > 0 for h in r.history)


def test_patch_discriminator_and_feature_matching_train_the_stu(dataset: Path, tmp_path: Path) -> None:
    """``disc=stu_discriminator(patch=True)`` with ``fm_weight``: the STU stage trains the
    patch discriminator and adds feature matching to the generator's loss; a run stopped and
    resumed logs the same losses; feature matching without an adversarial term is refused."""
    from letsplay.models.train import stu_discriminator

    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="stu", steps=3, ckpt_every=1, disc=stu_discriminator(patch=True), fm_weight=1.0)
    tr = Trainer(mcfg, cfg, dataset, tmp_path / "a", progress=False)
    before = [p.detach().clone() for p in tr.disc.parameters()]
    full = tr.run()
    assert tr.disc.cfg.patch and not all(torch.equal(a, b) for a, b in zip(before, tr.disc.parameters(), strict=True))
    assert all(h["fm"] > 0 and math.isfinite(h["d"]) for h in full.history)
    first = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(stop_at=1)
    rest = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(full.history)
    with pytest.raises(ValueError, match="adv_weight"):
        _cfg(fm_weight=1.0, adv_weight=0.0)


def test_rank_shards_partition_the_one_process_batch(dataset: Path) -> None:
    """What makes distributed training equal one process's (see test_ddp.py): under
    ``torchrun`` rank r's sequences are the global batch's r, r + world, ... -- for the
    sampler's batches across epochs and for the KP lanes, also when lanes move on to new
    clips -- so 2 ranks x batch 2 read exactly the sequences of 1 process x batch 4."""
    from letsplay.models.data.torch_dataset import PerformanceDataset, open_sources
    from letsplay.models.train_data import Batches, Lanes
    from letsplay.models.train_dist import Dist

    mcfg = preset("tiny", "cello")
    clips = open_sources(dataset, split="train")
    ds = PerformanceDataset(clips, 30, mcfg.audio, mcfg.video, seed=0, random_offset=True)
    ds.with_frames = False
    assert len(clips) >= 2 and len(ds) >= 4

    def seen(b: dict) -> list[tuple[str, int]]:
        return list(zip(b["clip"], (int(s) for s in b["start"]), strict=True))

    one = Batches(ds, 2, 7, Dist())
    ranks = [Batches(ds, 1, 7, Dist(rank=r, world=2)) for r in range(2)]
    assert ranks[0].per_epoch == one.per_epoch
    for _ in range(2 * one.per_epoch + 1):  # into a third epoch
        want = seen(one.next())
        got = [seen(r.next()) for r in ranks]
        assert [got[k % 2][k // 2] for k in range(2)] == want

    one_l = Lanes(ds, 2, 30, 7, Dist())
    lanes = [Lanes(ds, 1, 30, 7, Dist(rank=r, world=2)) for r in range(2)]
    resets = 0
    for _ in range(12):  # long enough for lanes to finish clips and take new ones
        b = one_l.next()
        got = [r.next() for r in lanes]
        assert [seen(got[k % 2])[k // 2] for k in range(2)] == seen(b)
        assert [bool(got[k % 2]["reset"][k // 2]) for k in range(2)] == b["reset"].tolist()
        resets += int(b["reset"].sum())
    assert resets > 2  # lanes did move on to new clips
    assert lanes[0].state() == lanes[1].state() == one_l.state()


def test_time_budget_sets_the_step_count_and_resume_keeps_it(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="kp", steps=100000, minutes=0.03, ckpt_every=100000, log_every=1)
    r = Trainer(mcfg, cfg, dataset, tmp_path / "t", progress=False).run()
    assert 8 <= r.step < 100000  # the probe's steps, then as many as fit, far fewer than asked for
    saved = json.loads((tmp_path / "t" / "train_config.json").read_text())
    assert saved["train"]["steps"] == r.step and saved["schedule"] == [["kp", 0, r.step]]
    log = [json.loads(ln) for ln in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == r.step and log[-1]["lr"] == pytest.approx(cfg.lr_final)  # the schedule spans them
    assert latest_checkpoint(tmp_path / "t").name == f"step-{r.step:07d}"
    again = Trainer(mcfg, cfg, dataset, tmp_path / "t", progress=False).run(resume=True)
    assert again.step == r.step and again.history == []  # finished: the decided count is kept, nothing more
    # a budget larger than the run needs trains exactly the steps asked for
    r2 = Trainer(mcfg, _cfg(stage="kp", steps=12, minutes=30.0), dataset, tmp_path / "u", progress=False).run()
    assert r2.step == 12
    with pytest.raises(ValueError, match="minutes"):
        _cfg(minutes=-1.0)


def test_stu_lanes_carry_the_performers_state_and_resume_exactly(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="stu", steps=4, stu_lanes=True, teacher_keypoints=0.5, adv_weight=0.0)
    tr = Trainer(mcfg, cfg, dataset, tmp_path / "a", progress=False)
    batch = tr.lanes.next()
    assert bool(batch["reset"].all())  # every lane starts a clip
    tr.train_step("stu", batch)
    st = tr.stu_state
    assert st is not None and float(st.stu.to_dict()["gru_h"].abs().sum()) > 0  # the CNN-GRU state moved on
    # the next chunk goes on from it, and a lane that starts a new clip starts from the initial state
    go_on = tr._stu_lane_state(torch.tensor([False, True]), 2).to_dict()
    init = tr.model.init_state(2).to_dict()
    for k, v in st.to_dict().items():
        assert torch.equal(go_on[k][0], v[0]) and torch.equal(go_on[k][1], init[k][1]), k
    full = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run()
    first = Trainer(mcfg, cfg, dataset, tmp_path / "c", progress=False).run(stop_at=2)
    rest = Trainer(mcfg, cfg, dataset, tmp_path / "c", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(full.history)  # the lane states were checkpointed


def test_thin_parts_weigh_more_in_the_stu_loss(dataset: Path, tmp_path: Path) -> None:
    from letsplay.models import losses
    from letsplay.models.train import THIN_PART_IDS

    real = torch.zeros(1, 2, 3, 32, 32)
    fake = real.clone()
    parts = torch.zeros(1, 2, 32, 32, dtype=torch.uint8)
    parts[..., 2, :] = THIN_PART_IDS[0]  # one row of bow
    fake[..., 2, :] = 0.5  # wrong exactly there
    plain = losses.frame_l1(fake, real)
    assert torch.allclose(losses.weighted_frame_l1(fake, real, torch.ones(1, 2, 32, 32)), plain)
    torch.set_num_threads(1)
    tr = Trainer(preset("tiny", "cello"), _cfg(stage="stu", steps=1, thin_weight=4.0, adv_weight=0.0), dataset,
                 tmp_path / "t", progress=False)
    weighted = tr._stu_losses(fake, real, torch.zeros(1, 2, 84, 87), parts)["l1"]
    assert float(weighted) == pytest.approx(float(plain) * 5 / (1 + 4 / 32), rel=1e-5)  # 1 + 4 on 1 row of 32
    batch = tr.batches.next()
    assert batch["parts"].dtype == torch.uint8 and batch["parts"].shape[-2:] == batch["frames"].shape[-2:]
    r = tr.run()
    assert r.step == 1 and math.isfinite(r.history[0]["l1"])


def _trains_alone_and_resumes(mcfg, cfg: TrainConfig, dataset: Path, tmp_path: Path, prefix: str, loss: str):
    """Run ``cfg`` (4 steps, checkpoints every 2): only the tensors under ``prefix`` change,
    the ``loss`` logged is finite, and a run stopped at step 2 and resumed logs the same
    losses. Returns (the full run's result, its weights)."""
    full = Trainer(mcfg, cfg, dataset, tmp_path / "a", progress=False)
    before = {k: v.clone() for k, v in full.model.state_dict().items()}
    res = full.run()
    after = full.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefix) for k in changed), sorted(changed)
    assert all(math.isfinite(h[loss]) for h in res.history)
    first = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(stop_at=2)
    rest = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(res.history)
    return res, after


def test_onset_stage_trains_the_detector_alone_and_kp_can_keep_it(dataset: Path, tmp_path: Path) -> None:
    """``stage="onset"`` updates the KHP's onset detector and nothing else, on pitch-shifted
    windows, and resumes exactly; a kp run from it with ``freeze_onset`` leaves the detector
    as it was while the rest of KHP learns."""
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="onset", steps=4, batch=2, seq_len=20, ckpt_every=2)
    res, after = _trains_alone_and_resumes(mcfg, cfg, dataset, tmp_path, "khp.onset.", "onset")

    kp = Trainer(mcfg, _cfg(stage="kp", steps=2, freeze_onset=True), dataset, tmp_path / "kp",
                 init_from=res.performer_path, progress=False)
    kp.run()
    now = kp.model.state_dict()
    assert all(torch.equal(now[k], after[k]) for k in after if k.startswith("khp.onset."))
    assert not torch.equal(now["khp.fc.weight"], after["khp.fc.weight"])

    from letsplay.models.presets import ablate

    plain = ablate(mcfg, "kp_no_motion")  # a KHP without the detector: the stage and the freeze are refused
    with pytest.raises(ValueError, match="onset detector"):
        Trainer(plain, _cfg(stage="onset", steps=1), dataset, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="--freeze-onset"):
        Trainer(plain, _cfg(stage="kp", steps=1, freeze_onset=True), dataset, tmp_path / "y", progress=False)


def test_pitch_stage_trains_the_detector_alone_and_kp_leaves_it(dataset: Path, tmp_path: Path) -> None:
    """``stage="pitch"`` updates the KHP's pitch detector and nothing else (its targets: the
    pitch of the latest note heard, moved with the windows' shift), and resumes exactly; the
    kp stage never changes the detector (the fingering it drives has no gradient)."""
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    cfg = _cfg(stage="pitch", steps=4, batch=2, seq_len=20, ckpt_every=2, onset_shift=2)
    batch = Trainer(mcfg, cfg, dataset, tmp_path / "c", progress=False).batches.next()
    assert batch["pitch"].dtype == torch.int64 and int(batch["pitch"].max()) >= 0
    res, after = _trains_alone_and_resumes(mcfg, cfg, dataset, tmp_path, "khp.pitch.", "pitch")

    kp = Trainer(mcfg, _cfg(stage="kp", steps=2), dataset, tmp_path / "kp", init_from=res.performer_path,
                 progress=False)
    kp.run()
    now = kp.model.state_dict()
    assert all(torch.equal(now[k], after[k]) for k in after if k.startswith("khp.pitch."))
    assert not torch.equal(now["khp.fc.weight"], after["khp.fc.weight"])

    from letsplay.models.presets import ablate

    with pytest.raises(ValueError, match="pitch detector"):
        Trainer(ablate(mcfg, "kp_no_fingering"), _cfg(stage="pitch", steps=1), dataset, tmp_path / "x",
                progress=False)


def test_onset_stage_pitch_shift_moves_whole_bins(dataset: Path, tmp_path: Path) -> None:
    """The onset stage's augmentation moves each sequence's CQT by whole bins (silence shifted
    in) and scales it by one gain: the shifted spectrum is the original's, moved."""
    mcfg = preset("tiny", "cello")
    tr = Trainer(mcfg, _cfg(stage="onset", steps=1, onset_shift=3), dataset, tmp_path / "s", progress=False)
    w = torch.rand(6, 2, mcfg.audio.n_bins, 5) + 0.1
    out = tr._shift_pitch(w)
    for b in range(6):
        found = False
        for k in range(-3, 4):
            src = w[b, :, max(0, -k): w.shape[2] - max(0, k)]
            dst = out[b, :, max(0, k): w.shape[2] - max(0, -k)]
            g = dst.flatten()[0] / src.flatten()[0]
            if 0.45 < g < 2.1 and torch.allclose(dst, src * g, rtol=1e-5):
                silent = out[b, :, : max(0, k)].abs().sum() + out[b, :, w.shape[2] - max(0, -k):].abs().sum()
                found = found or float(silent) == 0.0
        assert found, b
    with pytest.raises(ValueError, match="onset_shift"):
        _cfg(onset_shift=-1)


def test_timbre_augmentation_is_one_smooth_curve_per_clip_and_resumes(dataset: Path, tmp_path: Path) -> None:
    """``timbre`` multiplies each sequence's CQT by one curve over the bins (the same at every
    frame and window column), smooth, different between sequences and bounded by its
    strength; off, it draws nothing. In kp lanes a lane keeps its curve until it starts a new
    clip, and a run stopped and resumed mid-clip logs the same losses."""
    torch.set_num_threads(1)
    mcfg = preset("tiny", "cello")
    off = Trainer(mcfg, _cfg(stage="kp", steps=1), dataset, tmp_path / "o", progress=False)
    w = torch.rand(4, 3, mcfg.audio.n_bins, 5) + 0.1
    rng = off.noise.get_state()
    assert off._timbre(w) is w and torch.equal(off.noise.get_state(), rng)

    tr = Trainer(mcfg, _cfg(stage="kp", steps=1, timbre=0.5), dataset, tmp_path / "t", progress=False)
    out = tr._timbre(w)
    ratio = (out / w).log()  # [B, T, bins, W]: the log curve each sequence was multiplied by
    curve = ratio[:, 0, :, 0]
    assert torch.allclose(ratio, curve[:, None, :, None].expand_as(ratio), atol=1e-5)
    assert (curve[0] - curve[1]).abs().max() > 0.05  # each sequence its own body
    assert curve.abs().max() < 0.5 * 4 + 2 * 0.5 + 1.4 * 0.5  # 4 sigma of the knots, tilt, gain
    steps = curve.diff(dim=1).abs().max()
    assert steps < (4.0 * 7 + 1.0) / (mcfg.audio.n_bins - 1) + 1e-4  # linear between 8 knots, plus the tilt

    kept = tr._timbre(w, torch.tensor([True, False, True, False]))  # lanes: the first chunk draws for all
    again = tr._timbre(w, torch.tensor([False, False, True, False]))
    assert torch.equal(again[[0, 1, 3]], kept[[0, 1, 3]]) and not torch.equal(again[2], kept[2])
    with pytest.raises(ValueError, match="timbre"):
        _cfg(timbre=-0.1)

    cfg = _cfg(stage="kp", steps=5, batch=1, seq_len=30, ckpt_every=2, timbre=0.5)
    full = Trainer(mcfg, cfg, dataset, tmp_path / "a", progress=False).run()
    first = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(stop_at=2)
    rest = Trainer(mcfg, cfg, dataset, tmp_path / "b", progress=False).run(resume=True)
    assert _losses(first.history + rest.history) == _losses(full.history)
    plain = Trainer(mcfg, dataclasses.replace(cfg, timbre=0.0), dataset, tmp_path / "p", progress=False).run()
    assert _losses(plain.history) != _losses(full.history)


def test_training_on_two_soundfonts_reads_both_datasets(dataset: Path, tmp_path: Path) -> None:
    """``data synth --soundfont`` plays the same pieces, motion and frames in another
    instrument's sound; ``train --data A B`` trains on both datasets' clips together, and
    refuses a dataset given twice or a soundfont that is not one."""
    from letsplay.models.data.synth_audio import fluidsynth_available, tim_gm_soundfont
    from letsplay.models.data.synth_dataset import SynthDatasetConfig
    from letsplay.models.data.torch_dataset import open_sources

    if not fluidsynth_available():
        pytest.skip("needs fluidsynth + FluidR3_GM (scripts/system-packages.sh) beside the TimGM6mb soundfont")
    other = synth_tiny(tmp_path / "tim", "cello", 0.2, 6.0, 3.0, synth="fluidsynth",
                       soundfont=str(tim_gm_soundfont()))
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["config"]["soundfont"] == str(tim_gm_soundfont().resolve())
    assert "soundfont" not in json.loads((dataset / "manifest.json").read_text())["config"]  # the backend's own
    a = {c.id: c for c in open_sources(dataset)}
    b = {c.id: c for c in open_sources(other)}
    assert a.keys() == b.keys()
    from letsplay.models.spec import AudioSpec

    for cid in a:
        assert np.array_equal(a[cid].keypoints()[0], b[cid].keypoints()[0])  # the same performance
        wa, wb = a[cid].audio(AudioSpec()), b[cid].audio(AudioSpec())
        n = min(len(wa), len(wb))
        assert np.abs(wa[:n] - wb[:n]).mean() > 0.1 * np.abs(wa[:n]).mean()  # another sound
    clip_meta = json.loads(next(other.glob("clips/*/clip.json")).read_text())
    assert clip_meta["synth"]["soundfont"] == "TimGM6mb.sf2"

    mcfg = preset("tiny", "cello")
    one = Trainer(mcfg, _cfg(stage="kp", steps=1), dataset, tmp_path / "one", progress=False)
    both = Trainer(mcfg, _cfg(stage="kp", steps=2, batch=2, seq_len=10), [dataset, other], tmp_path / "both",
                   progress=False)
    assert len(both.dataset.clips) == 2 * len(one.dataset.clips)
    assert {c.root for c in both.dataset.clips} == {dataset, other}
    res = both.run()
    assert all(math.isfinite(h["kp"]) for h in res.history)
    with pytest.raises(ValueError, match="given twice"):
        Trainer(mcfg, _cfg(stage="kp", steps=1), [dataset, dataset], tmp_path / "twice", progress=False)
    for bad, msg in ((tmp_path / "missing.sf2", "no such file"), (other / "manifest.json", "ends in .sf2")):
        with pytest.raises(ValueError, match=msg):
            SynthDatasetConfig(instrument="cello", minutes=0.2, soundfont=str(bad)).validate()


def test_init_reads_the_data_as_the_checkpoint_hears_it(dataset: Path, tmp_path: Path) -> None:
    """Training from --init reads the clips with the checkpoint's own audio spec and
    lookahead, whatever model config the caller passed (the preset's 0 ms): a KHP trained
    to hear 100 ms ahead keeps hearing 100 ms ahead."""
    import dataclasses

    mcfg = preset("tiny", "cello")
    ahead = dataclasses.replace(mcfg, video=dataclasses.replace(mcfg.video, lookahead_ms=100.0))
    ck = tmp_path / "ahead.safetensors"
    Performer(ahead).save(ck)
    tr = Trainer(mcfg, _cfg(stage="kp", steps=1), dataset, tmp_path / "t", init_from=ck, progress=False)
    assert tr.model.cfg.video.lookahead_ms == 100.0
    assert tr.dataset.video_spec.lookahead_ms == 100.0
