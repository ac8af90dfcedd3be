"""Held-out evaluation: image metrics, the sync metric against chance, the baseline rows.

The sync metric is checked on the synthetic performer's motion (no video rendered): the
real motion scores well above chance, chance-like motion (random events, a jittering
still pose, motion late by more than the tolerance) scores about 0, a frozen arm below 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from letsplay.models.ablation import ablation_markdown
from letsplay.models.data.performer_motion import Body, perform
from letsplay.models.data.scores import random_melody
from letsplay.models.evaluate import (
    ROW_NAMES,
    evaluate,
    held_out_clips,
    moving_mask,
    nyquist_energy,
    part_matches,
    psnr,
    result_table,
    ssim,
    still_picture,
)
from letsplay.models.spec import VideoSpec
from letsplay.models.sync import motion_events, onset_frames, pool_sync, score_events, sync_counts

FPS = 30.0
SECONDS = 15.0
N = int(SECONDS * FPS)


def _performance(instrument: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints [N, 67, 2], onset frames) of a random melody played by identity ``seed``."""
    notes = random_melody(instrument, seed, SECONDS).notes
    kp = perform(notes, Body.from_seed(seed, instrument), N, VideoSpec(fps=FPS)).keypoints
    return kp, onset_frames(list(notes), FPS, N)


@pytest.fixture(scope="module")
def performances() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return {inst: [_performance(inst, seed) for seed in range(5)] for inst in ("cello", "trombone")}


def _pooled(kps: list[np.ndarray], onsets: list[np.ndarray], instrument: str, seed: int = 0):
    return pool_sync([sync_counts(motion_events(kp, instrument), on, len(kp), seed=seed + i)
                      for i, (kp, on) in enumerate(zip(kps, onsets, strict=True))])


# --------------------------------------------------------------------------- sync


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_ground_truth_motion_is_in_sync(performances, instrument: str) -> None:
    clips = performances[instrument]
    cs = [score_events(motion_events(kp, instrument), on, N, seed=i).c for i, (kp, on) in enumerate(clips)]
    assert np.mean(cs) >= 0.5 and min(cs) > 0.2
    pooled = _pooled([kp for kp, _ in clips], [on for _, on in clips], instrument)
    assert pooled.c >= 0.5 and abs(pooled.best_lag) <= 2 and pooled.f1 > pooled.chance


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_chance_like_motion_scores_about_zero(performances, instrument: str) -> None:
    clips = performances[instrument]
    onsets = [on for _, on in clips]
    still = [np.broadcast_to(kp.mean(0), kp.shape) for kp, _ in clips]
    for sigma in (0.002, 0.01):  # a still pose with a jittering wrist (and body)
        cs = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            jitter = [s + rng.normal(0.0, sigma, s.shape).astype(np.float32) for s in still]
            sc = _pooled(jitter, onsets, instrument, seed=10 * seed)
            assert sc.events > len(clips) * 10  # the jitter does make events
            cs.append(sc.c)
        assert abs(np.mean(cs)) < 0.1, (sigma, cs)
    # as many events as onsets at random frames
    cs = []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        counts = [sync_counts(np.sort(rng.choice(N, len(on), replace=False)), on, N, seed=seed) for on in onsets]
        cs.append(pool_sync(counts).c)
    assert abs(np.mean(cs)) < 0.1, cs


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_late_motion_is_found_at_its_lag(performances, instrument: str) -> None:
    clips = performances[instrument]
    onsets = [on for _, on in clips]
    real = _pooled([kp for kp, _ in clips], onsets, instrument)
    late = [np.concatenate([np.repeat(kp[:1], 5, axis=0), kp[:-5]]) for kp, _ in clips]  # 5 frames late
    sc = _pooled(late, onsets, instrument)
    assert sc.c < 0.1 and sc.best_lag == real.best_lag + 5
    assert sc.f1_best_lag > 0.6


def test_events_on_the_onsets() -> None:
    rng = np.random.default_rng(0)
    on = np.sort(rng.choice(np.arange(3, N - 3), 40, replace=False))
    exact = score_events(on, on, N)
    assert exact.c >= 0.9 and exact.f1 == 1.0 and exact.best_lag == 0 and exact.matched == 40
    late = score_events(on + 5, on, N)
    assert late.best_lag == 5 and late.f1_best_lag == 1.0
    early = score_events(on - 3, on, N)
    assert early.best_lag == -3
    # a steady eighth-note rhythm (an onset every 7 or 8 frames): still 1 on the onsets
    eighths = np.round(np.arange(5, N - 5, 7.5)).astype(int)
    steady = score_events(eighths, eighths, N)
    assert steady.c >= 0.9 and steady.chance > 0.3  # chance is high for a dense rhythm, C is still ~1
    mask = np.zeros(N, bool)
    mask[eighths] = True
    assert score_events(mask, eighths, N) == steady  # a bool mask is the same as its frames


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_frozen_arm_is_below_chance(performances, instrument: str) -> None:
    kp, on = performances[instrument][0]
    still = np.broadcast_to(kp.mean(0), kp.shape)
    assert not motion_events(still, instrument).any()
    sc = score_events(motion_events(still, instrument), on, N)
    assert sc.f1 == 0.0 and sc.events == 0 and sc.c < 0


def test_sync_input_checks() -> None:
    with pytest.raises(ValueError, match="instrument"):
        motion_events(np.zeros((10, 67, 2)), "violin")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        sync_counts(np.array([3, 12]), np.array([2]), 10)
    assert pool_sync([sync_counts(np.array([3]), np.array([], int), 10)]) is None  # no onsets: no score
    assert onset_frames([(0.0, 1, 60, 80), (0.5, 1, 62, 80), (0.51, 1, 64, 80), (9.0, 1, 60, 80)], 30.0, 100
                        ).tolist() == [0, 15]


# --------------------------------------------------------------------------- image metrics


def test_psnr_ssim() -> None:
    x = torch.rand(2, 3, 24, 24)
    assert torch.allclose(ssim(x, x), torch.ones(2)) and bool((psnr(x, x) > 90).all())
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert bool((ssim(x, y) < 1).all()) and float(psnr(x, y).mean()) == pytest.approx(20.5, abs=1.5)


def test_checkerboard_energy() -> None:
    H = W = 32
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(xx / 5) * torch.cos(yy / 7)).expand(1, 3, H, W).clone()
    checker = smooth + 0.05 * (1 - 2 * ((xx + yy) % 2))  # a 2-pixel-period pattern
    e_smooth, e_checker = float(nyquist_energy(smooth)), float(nyquist_energy(checker))
    assert e_checker / e_smooth > 100  # the measure: generated / real energy
    assert float(nyquist_energy(smooth)) / e_smooth == 1.0
    # the definition: the Nyquist row and column of the luminance's 2-D DFT
    f = torch.fft.fft2(0.299 * checker[0, 0] + 0.587 * checker[0, 1] + 0.114 * checker[0, 2]).abs().pow(2)
    want = f[H // 2].sum() + f[:, W // 2].sum() - f[H // 2, W // 2]
    assert e_checker == pytest.approx(float(want), rel=1e-4)


def test_moving_pixels() -> None:
    real = torch.full((5, 3, 8, 8), 0.5)
    real[2, 1, 3, 4] = 0.9  # one pixel moves in one frame
    real[3, :, 0, 0] = 0.53  # below the threshold
    still = still_picture(real)
    assert torch.equal(still, torch.full((3, 8, 8), 0.5))
    m = moving_mask(real, still)
    assert m.shape == (5, 8, 8) and m.sum() == 1 and bool(m[2, 3, 4])
    assert float(still_picture(np.array([[1.0], [2.0], [4.0], [8.0]]))[0]) == 3.0  # np.median's even count


def test_part_matches_finds_a_drawn_part_within_a_pixel_and_not_a_missing_one() -> None:
    real = torch.full((1, 3, 16, 16), 0.2)
    real[:, :, 8, 2:14] = torch.tensor([0.9, 0.8, 0.1])[:, None]  # a thin yellow bow, one pixel wide
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 8, 2:14] = True
    assert part_matches(real, real, mask) == (12, 12)
    assert part_matches(torch.roll(real, 1, 2), real, mask) == (12, 12)  # a pixel off: the map's tolerance
    assert part_matches(torch.roll(real, 3, 2), real, mask) == (0, 12)  # three pixels off: not drawn there
    assert part_matches(torch.full_like(real, 0.2), real, mask) == (0, 12)  # left out
    faint = real.clone()
    faint[:, :, 8, 2:8] = 0.2 + (faint[:, :, 8, 2:8] - 0.2) * 0.5  # half of it at half contrast
    assert part_matches(faint, real, mask) == (7, 12)  # the faint end's last pixel has a full neighbour
    assert part_matches(real, real, torch.zeros_like(mask)) == (0, 0)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def dataset(cello_set: Path) -> Path:
    return cello_set


def test_evaluate_rows(dataset: Path, performer, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    from letsplay.models.data.torch_dataset import PerformanceDataset

    clips = held_out_clips(dataset, "train", "cello")[:2]
    res = evaluate(performer, clips, max_seconds=2.0, strip=tmp_path / "s.png", progress=False)
    assert list(res.rows) == list(ROW_NAMES) and res.frames == 60 * len(clips) and res.clips == len(clips)
    for name in ("model", "still_picture", "renderer_only"):
        r = res.rows[name]
        assert all(math.isfinite(v) for v in (r.psnr, r.ssim, r.psnr_moving, r.checkerboard)), name
        assert 0 < r.ssim <= 1 and r.checkerboard > 0
        assert 0 <= r.thin_part <= 1, name  # the tiny set's clips have part maps (format 2)
    for name in ("model", "still_pose"):
        assert 0 <= res.rows[name].kp_dist < 0.5
        assert res.rows[name].sync is not None
    assert res.rows["still_pose"].sync.events == 0 and res.rows["still_pose"].sync.c < 0
    assert res.rows["ground_truth"].sync.c > 0.2 and res.rows["ground_truth"].psnr is None
    assert res.rows["still_picture"].kp_dist is None and res.rows["still_picture"].sync is None
    assert res.rows["model"].temporal >= 0 and (tmp_path / "s.png").is_file()
    import cv2

    strip = cv2.imread(str(tmp_path / "s.png"))
    H = performer.cfg.video.height
    assert strip.shape[0] == 3 * H + 2 * 4  # ground truth, the model, the renderer fed the real keypoints
    # an untrained model's renderer-only row differs from the model row: it draws other keypoints
    assert res.rows["renderer_only"].psnr != res.rows["model"].psnr

    # the still picture's PSNR and moving-pixel PSNR, computed here independently
    want, want_moving = [], []
    for clip in clips:
        ds = PerformanceDataset([clip], 60, performer.cfg.audio, performer.cfg.video, stride=60)
        real = ((ds[0]["frames"].double() + 1) / 2 * 255).round() / 255  # [60, 3, H, W]
        med = torch.from_numpy(np.median(real.numpy(), axis=0))
        mse = (real - med).pow(2).flatten(1).mean(1)
        want += (10 * torch.log10(1 / mse)).tolist()
        moving = ((real - med).abs() > 0.05).any(1, keepdim=True).expand_as(real)
        want_moving.append(float(10 * torch.log10(1 / (real - med).pow(2)[moving].mean())))
    assert res.rows["still_picture"].psnr == pytest.approx(np.mean(want), abs=1e-3)
    assert res.rows["still_picture"].psnr_moving == pytest.approx(np.mean(want_moving), abs=1e-3)
    assert res.rows["still_picture"].psnr_moving < res.rows["still_picture"].psnr  # weakest where it moves

    d = json.loads(json.dumps(res.to_dict()))
    assert set(d["rows"]) == set(ROW_NAMES) and {"f1", "chance", "c", "best_lag"} <= set(d["rows"]["model"]["sync"])
    table = result_table(res)
    assert len(table.splitlines()) == 1 + len(ROW_NAMES) and "still picture" in table and " - " in table

    kp = evaluate(performer, clips[:1], max_seconds=2.0, kp_only=True, progress=False)
    assert list(kp.rows) == ["model", "still_pose", "ground_truth"] and kp.rows["model"].psnr is None
    assert kp.rows["model"].kp_dist == pytest.approx(res.rows["model"].kp_dist, rel=0.5)
    fast = evaluate(performer, clips[:1], max_seconds=1.0, renderer_only=False, progress=False)
    assert "renderer_only" not in fast.rows


def test_ablation_markdown() -> None:
    def rec(psnr: float, kp: float, c: float) -> dict:
        return {"rows": {"model": {"psnr": psnr, "ssim": 0.5, "kp_dist": kp, "sync": {"c": c}, "psnr_moving": psnr - 8,
                                   "checkerboard": 1.25},
                         "still_picture": {"psnr": 18.5, "ssim": 0.45, "psnr_moving": 11.0, "checkerboard": 0.75},
                         "still_pose": {"kp_dist": 0.2, "sync": {"c": -0.2}},
                         "ground_truth": {"sync": {"c": 0.66}}}}

    md = ablation_markdown({"cello": {"full": rec(20.0, 0.1, 0.31), "kp_paper": rec(19.0, 0.12, 0.05),
                                      "warp": rec(23.0, 0.1, 0.31)}}, "tiny", 10)
    assert "17.07" in md and "20.00" in md and "0.310" in md
    # Table I: moving-pixel PSNR and checkerboard beside PSNR / SSIM; the warp row has no paper figure
    assert "| Ours | 20.00 / 17.07 | 0.500 / 0.563 | 12.00 | 1.25 |" in md
    assert "| (f) the warp instead of CVG (what ships) | 23.00 / - | 0.500 / - | 15.00 | 1.25 |" in md
    assert "| Still picture (baseline) | 18.50 / - | 0.450 / - | 11.00 | 0.75 |" in md
    # Table II: the paper's full KP beside the paper's figure; ours (streaming + motion heads) has none
    assert "| Paper's KP (avg. condition + DLT) | 0.1200 / 0.117 | 0.050 |" in md
    assert "| Ours: streaming encoder + motion heads | 0.1000 / - | 0.310 |" in md
    assert "Still picture" in md and "18.50" in md and "-0.200" in md and "0.660" in md


def test_eval_cli_writes_every_row(dataset: Path, tiny_ckpt: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`letsplay eval` (through ui.cmd_train's own parser): a table of the rows, all rows in the JSON."""
    import argparse

    from letsplay.ui import cmd_train

    (name, _help, add, run), = [c for c in cmd_train.COMMANDS if c[0] == "eval"]
    p = argparse.ArgumentParser(prog=f"letsplay {name}")
    add(p)
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(tiny_ckpt), "--data", str(dataset), "--split", "train", "--max-seconds", "1",
            "--json", str(out), "--threads", "1"]
    assert run(p.parse_args(argv)) == 0
    d = json.loads(out.read_text())
    assert list(d["rows"]) == list(ROW_NAMES) and d["frames"] > 0 and len(d["per_clip"]) == d["clips"]
    text = capsys.readouterr().out
    for label in ("model", "still picture", "still pose", "renderer only", "ground truth", "sync C"):
        assert label in text
    assert run(p.parse_args([*argv, "--no-renderer-only"])) == 0
    assert "renderer_only" not in json.loads(out.read_text())["rows"]


def test_motion_onsets_count_found_notes_and_the_right_bow_direction() -> None:
    """The motion heads' figures in a keypoints-only evaluation: onsets are the rising edges
    of the onset probability, matched one to one within a frame of the notes'; the bow
    direction is right where it equals the data's bowing."""
    from letsplay.models.evaluate import _motion_onsets

    notes = [(1.0, 1.0, 48, 80), (2.0, 1.0, 50, 80), (3.0, 0.5, 52, 80)]  # frames 30, 60, 90; legato
    n = 120
    motion = np.zeros((n, 6), np.float32)
    motion[:, 0] = -10.0
    motion[[31, 32, 60, 100], 0] = 10.0  # one held detection a frame late, one on time, one extra; 90 missed
    motion[:, 1] = np.repeat([0.0, 1.0, 0.0, 1.0], [31, 29, 40, 20])  # flips where the detections begin
    got = _motion_onsets(motion, notes, 30.0, "cello")
    assert got["onset_recall"] == (2.0, 3.0) and got["onset_precision"] == (2.0, 3.0)
    # the real bow: up before frame 30, down from 30, up from 60, down from 90
    assert got["bow_direction"] == (float(30 + 29 + 30 + 20), 120.0)
    assert "bow_direction" not in _motion_onsets(motion, notes, 30.0, "trombone")
