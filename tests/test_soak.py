"""A short soak in CI (the long one is `python -m benchmarks.soak --minutes 10`): several
minutes of audio through the engine into an mp4 keep memory flat and A/V aligned."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.pulse import pulse_available
from benchmarks.soak import run


def test_short_soak_memory_flat_and_av_aligned(tmp_path):
    r = run(minutes=3.0, preset="tiny", record=True, out_dir=str(tmp_path), progress=False)
    assert r["frames"] == 3 * 60 * 30 and r["errors"] == 0 and r["dropped"] == 0
    assert len(r["per_minute"]) == 3
    assert r["rss_growth_pct"] < 5.0, r["per_minute"]
    # the audio clock is never more than one frame plus one 4096-sample read ahead of the video
    assert r["max_av_offset_ms"] < 1000 / 30 + 4096 / 44.1
    rec = r["recording"]
    assert rec["frames"] == 5400
    assert abs(rec["av_duration_diff_ms"]) < 1000 / 30
    assert abs(rec["video_seconds"] - 180.0) < 1e-6


@pytest.mark.skipif(not pulse_available(), reason="PulseAudio (pulseaudio, pactl, paplay) not installed")
def test_live_soak_runs_a_real_device_and_accounts_for_every_frame(tiny_ckpt, tmp_path):
    """The live soak benchmark, briefly: music played into a real (PulseAudio null-sink)
    device, captured live, recorded; every frame slot is either in the mp4 or a counted drop."""
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE")}
    r = subprocess.run([sys.executable, "-m", "benchmarks.soak_live", "--minutes", "0.2", "--interval", "4",
                        "--performer", str(tiny_ckpt), "--out", str(tmp_path / "run"), "--json", str(out),
                        "--plot", str(tmp_path / "soak.png")],
                       capture_output=True, text=True, timeout=240, env=env, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert len(res["per_minute"]) == 3 and not res["interrupted"] and res["errors"] == 0
    assert res["frames"] > 0 and all(row["rss_mb"] > 0 for row in res["per_minute"])
    assert max(row["input_level_dbfs"] for row in res["per_minute"]) > -60  # the music arrived through the device
    rec = res["recording"]
    assert rec["frames"] == res["frames"] and rec["gap_frames"] == res["dropped"] and rec["out_of_order"] == 0
    assert abs(rec["frames"] + rec["gap_frames"] - rec["frames_expected"]) <= 2
    assert (tmp_path / "soak.png").stat().st_size > 0


@pytest.mark.skipif(not pulse_available(), reason="PulseAudio (pulseaudio, pactl, paplay) not installed")
def test_live_sync_plays_clips_through_a_real_device_and_finds_them(tiny_ckpt, cello_set, tmp_path):
    """The live sync benchmark, briefly: clips played into a real (PulseAudio null-sink)
    device and captured live are found again by cross-correlation, one after the other at
    the playlist's spacing, and scored (the random tiny performer's C means nothing here;
    the real motion's is the clips' own)."""
    import numpy as np

    from letsplay.models.data.torch_dataset import open_sources

    split = next(s for s in ("test", "val", "train") if open_sources(cello_set, split=s, instrument="cello"))
    out = tmp_path / "live_sync.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE")}
    r = subprocess.run([sys.executable, "-m", "benchmarks.live_sync", "--performer", str(tiny_ckpt),
                        "--data", str(cello_set), "--split", split, "--seconds", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=240, env=env, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["alignment"]["peak_over_median"] > 20  # the played audio is really in the captured audio
    firsts = [c["first_frame"] for c in res["per_clip"]]
    assert len(firsts) == res["clips"] >= 1
    assert all(abs(b - a - 3 * 30) <= 1 for a, b in zip(firsts, firsts[1:], strict=False))  # 2 s + 1 s of gap
    assert res["sync"]["onsets"] > 0 and -1.0 <= res["sync"]["c"] <= 1.0
    assert np.isfinite(res["real_motion_sync"]["c"])
