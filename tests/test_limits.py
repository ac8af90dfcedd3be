"""What limits a performer end to end: the synthetic performer's idle motion told apart from
what the notes drive, and the oracle rows measured on a real (tiny) set."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from letsplay.models.data.performer_motion import Body, perform
from letsplay.models.data.scores import random_melody
from letsplay.models.evaluate import held_out_clips
from letsplay.models.limits import ROWS, idle_motion, measure
from letsplay.models.skeleton import LEFT_HAND
from letsplay.models.spec import VideoSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEGS = [9, 10, 11, 12, 13, 14, 19, 20, 21, 22, 23, 24]


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_idle_motion_is_the_clock_driven_sway_and_nod_only(instrument):
    video = VideoSpec(fps=30.0)
    body = Body.from_seed(7, instrument)
    notes = random_melody(instrument, 7, 8.0).notes
    n = 240
    a, b = perform(notes, body, n, video), perform(notes, body, n, video, idle=False)
    d = np.linalg.norm(a.keypoints - b.keypoints, axis=-1) * 256  # pixels
    assert d[:, LEGS].max() == 0.0  # the legs do not sway
    assert d[:, 1].max() > 0.5  # the neck does: the idle sway is there, and only with idle
    if instrument == "trombone":  # the left hand holds the horn at the lips: it nods and sways with them
        assert d[:, LEFT_HAND.start:LEFT_HAND.stop].mean() > 0.2
    # in silence, without the idle motion, nothing moves the upper body at all -- but for the
    # cellist retaking the bow (from BOW_RETAKE_S on, arrived well within a second after it)
    still = perform([], body, 90, video, idle=False)
    settled = still.keypoints[45:] if instrument == "cello" else still.keypoints
    assert np.abs(settled - settled[:1]).max() < 1e-5
    assert np.abs(still.keypoints[:9] - still.keypoints[:1]).max() < 1e-6  # before the retake: still
    idle = perform([], body, 90, video)
    assert np.abs(idle.keypoints - idle.keypoints[:1]).max() * 256 > 0.2
    # the notes still drive the rest: the idle-free performance moves the playing arm as the real one
    arm = [3, 4]
    assert np.linalg.norm(np.diff(b.keypoints[:, arm], axis=0), axis=-1).sum() > 0.5 * np.linalg.norm(
        np.diff(a.keypoints[:, arm], axis=0), axis=-1).sum()


def test_idle_motion_of_a_clip_rebuilds_its_keypoints(cello_set: Path):
    clip = held_out_clips(cello_set, "train", "cello")[0]
    n = clip.n_frames
    idle = idle_motion(clip, n)
    real, _ = clip.keypoints()
    notes_only = real[:n] - idle
    body = Body.from_seed(int(clip.meta["identity_seed"]), "cello")
    from letsplay.models.data.scores import Note

    notes = [Note(float(x[0]), float(x[1]), int(x[2]), int(x[3])) for x in clip.notes()]
    want = perform(notes, body, n, VideoSpec(fps=clip.fps), idle=False).keypoints
    assert np.abs(notes_only - want).max() < 1e-5
    assert np.abs(idle).max() * 256 > 0.1  # the clip's performer does sway
    # a model whose frames are half as wide crops the clip's middle: the motion spans twice the width
    narrow = idle_motion(clip, n, (32, 16))
    assert np.allclose(narrow, idle * np.array([2.0, 1.0]), atol=1e-7)


def test_idle_motion_is_refused_for_a_clip_without_its_performer():
    prepared = SimpleNamespace(id="me01", meta={"kind": "prepared"}, fps=30.0, n_frames=90, instrument="cello")
    with pytest.raises(ValueError, match="only for synthetic clips"):
        idle_motion(prepared, 90)


def test_the_limit_rows_on_a_tiny_set(cello_set: Path, tmp_path: Path):
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.performer import Performer
    from letsplay.models.presets import ablate, preset
    from letsplay.models.warp import reference_from_clip

    torch.manual_seed(0)
    p = Performer(ablate(preset("tiny", "cello"), "warp")).eval()
    p.set_reference(reference_from_clip(open_sources(cello_set)[0], (p.cfg.video.height, p.cfg.video.width)))
    with torch.no_grad():  # a readout that reads its states (a fresh one starts at the mean pose, reading nothing)
        torch.nn.init.normal_(p.khp.fc.weight, std=0.01)
    clips = held_out_clips(cello_set, "train", "cello")[:2]
    r = measure(p, clips, max_seconds=2.0, progress=False, strip=tmp_path / "limits.png", strip_frames=3)
    assert list(r["rows"]) == list(ROWS) and r["frames"] == 60 * len(clips) and r["clips"] == len(clips)
    rows = r["rows"]
    assert all(math.isfinite(v["psnr"]) for v in rows.values())
    assert rows["renderer_only"]["kp_error"] == 0.0
    # the idle motion held at its mean is near the real pose, far nearer than the still pose
    assert 0.0 < rows["audio_ceiling"]["kp_error"] < 0.5
    assert rows["audio_ceiling"]["psnr"] > rows["model"]["psnr"]  # an untrained KHP is far from the real pose
    assert rows["renderer_only"]["psnr"] > rows["audio_ceiling"]["psnr"]  # the idle motion is drawn: it costs
    # the truth driving the motion states changes what KHP draws
    assert rows["real_motion_states"]["kp_error"] != rows["model"]["kp_error"]
    assert rows["real_idle_motion"]["kp_error"] != rows["model"]["kp_error"]
    for row in ROWS:
        if row != "still_picture":
            assert rows[row]["psnr_over_still"] == pytest.approx(rows[row]["psnr"] - rows["still_picture"]["psnr"])
    assert {c["clip"] for c in r["per_clip"]} == {c.id for c in clips}
    import cv2

    strip = cv2.imread(str(tmp_path / "limits.png"))
    H, W = p.cfg.video.height, p.cfg.video.width
    assert strip.shape[:2] == (5 * H + 4 * 4, 3 * W + 2 * 4)  # the real frames and four rows of errors
    errors = strip[H + 4:]
    renderer_only = strip[4 * (H + 4):]
    assert errors.max() > 0 and renderer_only.mean() < errors[:H].mean()  # the real keypoints err least
