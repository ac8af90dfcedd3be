"""A short soak in CI (the long one is `python -m benchmarks.soak --minutes 10`): several
minutes of audio through the engine into an mp4 keep memory flat and A/V aligned."""

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
