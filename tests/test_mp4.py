"""MP4 recording: timestamps from the master clock, kill-safety, partial files, clear errors.

Everything here is real: files are written and read back with PyAV, the kill test kills a
child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import (
    AUDIO,
    BACKGROUND,
    SQUARE,
    SR,
    decode_video_times,
    frame_out,
    keypoints,
    sine,
    square_frame,
)

from letsplay.models.spec import VideoSpec
from letsplay.realtime.sinks import FrameOut, Mp4Recorder, SinkError, fps_fraction


def record(path: Path, video: VideoSpec, indices, n_samples: int, *, audio_fn=sine, seed: int = 0,
           **kw) -> Mp4Recorder:
    """Feed frames and audio (random block sizes) in clock order, as the engine does."""
    rng = np.random.default_rng(seed)
    rec = Mp4Recorder(path, **kw)
    rec.open(AUDIO, video)
    rate = fps_fraction(video.fps)
    pos = 0
    for i in indices:
        until = min(n_samples, int((i + 1) * SR / rate))  # audio up to the end of frame i
        while pos < until:
            n = min(int(rng.integers(64, 4000)), until - pos)
            rec.write_audio(audio_fn(pos, n), pos)
            pos += n
        rec.write_frame(frame_out(i, video))
    if pos < n_samples:
        rec.write_audio(audio_fn(pos, n_samples - pos), pos)
    rec.close()
    return rec


def decode_video(path: Path) -> list[tuple[Fraction, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.pts * f.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def decode_audio(path: Path) -> tuple[int, np.ndarray]:
    """(first sample's pts, all samples)."""
    with av.open(str(path)) as c:
        frames = [(f.pts, f.to_ndarray()[0]) for f in c.decode(audio=0)]
    return frames[0][0], np.concatenate([x for _, x in frames])


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * SR / len(x))


def test_mp4_round_trip(tmp_path):
    video = VideoSpec(fps=30, height=256, width=256)
    path = tmp_path / "take.mp4"
    rec = record(path, video, range(90), 3 * SR)
    assert rec.frames_written == 90 and rec.frames_skipped == 0

    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    frames = decode_video(path)
    assert len(frames) == 90
    times = [t for t, _ in frames]
    assert times == [Fraction(i, 30) for i in range(90)]
    video_seconds = float(times[-1] + Fraction(1, 30))
    assert video_seconds == pytest.approx(3.0, abs=1 / 30)

    # Colours survive H.264 + yuv420p: compare inside the square and on the background.
    for i in (0, 45):
        got = frames[i][1].astype(int)
        want = square_frame(i, 256, 256).astype(int)
        assert np.abs(got - want).mean() < 4
        x0 = 2 * i
        assert np.abs(got[85 + 32, x0 + 32] - np.array(SQUARE)).max() < 12  # centre of the square
        assert np.abs(got[10, 10] - np.array(BACKGROUND)).max() < 12

    first, audio = decode_audio(path)
    assert first == 0
    assert len(audio) / SR == pytest.approx(3.0, abs=1 / 30)
    assert peak_hz(audio[SR // 2:SR // 2 + SR]) == pytest.approx(440, abs=2)
    # The AAC priming delay is trimmed: sample k of the file is sample k of the clock.
    ref = sine(0, len(audio))
    lag = np.argmax(np.correlate(audio[SR:SR + 4096], ref[SR - 100:SR + 4096 + 100], "valid")) - 100
    assert abs(lag) <= 1


@pytest.mark.parametrize("fps", [30, 29.97, 25])
def test_mp4_dropped_frames_keep_exact_timestamps(tmp_path, fps):
    video = VideoSpec(fps=fps, height=64, width=64)
    written = [0, 1, 2, 3, 7, 8, 9, 10, 11, 25, 26, 40, 41, 42, 43, 44, 45, 60]
    path = tmp_path / "gaps.mp4"
    rec = record(path, video, written, int(61 * SR / fps))
    assert rec.frames_written == len(written)
    rate = fps_fraction(fps)
    assert decode_video_times(path) == [i / rate for i in written]  # exact, not renumbered


def test_mp4_audio_gap_is_filled_and_stays_aligned(tmp_path):
    """Audio blocks with a hole: silence goes in, and a click after the hole still lands
    on its clock sample."""
    video = VideoSpec(fps=30, height=64, width=64)
    path = tmp_path / "agap.mp4"
    click = int(2.2 * SR)

    rec = Mp4Recorder(path)
    rec.open(AUDIO, video)
    for i in range(90):
        lo, hi = i * 1470, (i + 1) * 1470
        if not 30 <= i < 40:  # frames 30..39 lose their audio
            x = np.zeros(hi - lo, np.float32)
            if lo <= click < hi:
                x[click - lo:click - lo + 64] = 0.9
            rec.write_audio(x, lo)
        rec.write_frame(frame_out(i, video))
    rec.close()
    assert rec.silence_inserted >= 10 * 1470

    first, audio = decode_audio(path)
    assert first == 0
    onset = int(np.argmax(np.abs(audio) > 0.3))
    assert abs(onset - click) <= 8


def test_mp4_long_recording_audio_and_video_end_together(tmp_path):
    """Two minutes at 29.97 fps (a frame is 1471.47 samples: any rounding would drift)."""
    video = VideoSpec(fps=29.97, height=64, width=64)
    rate = fps_fraction(video.fps)
    n = int(120 * rate)
    path = tmp_path / "long.mp4"
    record(path, video, range(n), int(n * SR / rate), preset="ultrafast", keyframe_seconds=2.0,
           audio_fn=lambda s, k: np.zeros(k, np.float32))
    times = decode_video_times(path)
    assert len(times) == n and times[-1] == (n - 1) / rate
    video_seconds = float(n / rate)
    first, audio = decode_audio(path)
    assert first == 0
    assert video_seconds == pytest.approx(120.0, abs=0.1)
    assert len(audio) / SR == pytest.approx(video_seconds, abs=1 / video.fps)


def test_mp4_started_mid_stream_keeps_audio_and_video_together(tmp_path):
    """Recording starts at stream frame 45, with audio from sample 0 already written before
    it: file time 0 is frame 45, and a flash (frame 60) and a click (its first sample) still
    coincide, 0.5 s into the file."""
    video = VideoSpec(fps=30, height=64, width=64)
    path = tmp_path / "mid.mp4"
    click = 60 * 1470
    audio = np.zeros(120 * 1470, np.float32)
    audio[click:click + 64] = 0.9

    rec = Mp4Recorder(path)
    rec.open(AUDIO, video)
    rec.write_audio(audio[:46 * 1470], 0)  # audio before the first frame: held, then cut at frame 45
    for i in range(45, 90):
        rec.write_audio(audio[(i + 1) * 1470:(i + 2) * 1470], (i + 1) * 1470)
        img = np.full((64, 64, 3), 255 if i == 60 else 0, np.uint8)
        rec.write_frame(FrameOut(i, i / 30, img, keypoints(i)))
    rec.close()

    frames = decode_video(path)
    assert len(frames) == 45 and frames[0][0] == 0
    flash = [t for t, img in frames if img.mean() > 128]
    assert flash == [Fraction(15, 30)]
    first, got = decode_audio(path)
    assert first == 0
    onset = int(np.argmax(np.abs(got) > 0.3))
    assert abs(onset - 15 * 1470) <= 8
    # the audio ran one frame ahead of the last frame: cut at close, both tracks end together
    assert len(got) / SR == pytest.approx(45 / 30, abs=1 / 30)
    assert rec.audio_samples_cut == 1470


def test_mp4_without_audio_writes_a_silent_track_of_the_same_length(tmp_path, caplog):
    video = VideoSpec(fps=30, height=64, width=64)
    path = tmp_path / "silent.mp4"
    rec = Mp4Recorder(path)
    rec.open(AUDIO, video)
    for i in range(150):
        rec.write_frame(frame_out(i, video))
    rec.close()
    assert "behind the video" in caplog.text  # said once, not 90 times
    assert caplog.text.count("behind the video") == 1
    first, audio = decode_audio(path)
    assert first == 0 and np.abs(audio).max() < 1e-3
    assert len(audio) / SR == pytest.approx(5.0, abs=1 / 30)
    assert len(decode_video_times(path)) == 150


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_mp4_full_disk_raises_a_clear_error_once_stopped(tmp_path):
    video = VideoSpec(fps=30, height=64, width=64)
    rec = Mp4Recorder("/dev/full")  # every write fails with ENOSPC, like a full disk
    try:
        rec.open(AUDIO, video)
    except SinkError:
        pytest.skip("cannot open /dev/full here")
    with pytest.raises(SinkError, match="disk full"):
        for i in range(300):
            rec.write_audio(sine(i * 1470, 1470), i * 1470)
            rec.write_frame(frame_out(i, video))
    with pytest.raises(SinkError, match="earlier write error"):
        rec.write_frame(frame_out(1000, video))
    rec.close()  # does not raise again


KILLED_RECORDER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from letsplay.models.spec import AudioSpec, VideoSpec
    from letsplay.realtime.sinks import FrameOut, Mp4Recorder

    video = VideoSpec(fps=30, height=64, width=64)
    rec = Mp4Recorder(sys.argv[1], keyframe_seconds=1.0)
    rec.open(AudioSpec(), video)
    kp = np.zeros((67, 2), np.float32)
    for i in range(100):
        t = np.arange(i * 1470, (i + 1) * 1470) / 44100
        rec.write_audio((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), i * 1470)
        rec.write_frame(FrameOut(i, i / 30, np.full((64, 64, 3), 2 * i, np.uint8), kp))
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), no Python cleanup at all
""")


def test_mp4_survives_a_killed_process(tmp_path):
    path = tmp_path / "crash.mp4"
    proc = subprocess.run([sys.executable, "-c", KILLED_RECORDER, str(path)], capture_output=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    frames = decode_video(path)
    # Keyframes (and fragments) every 30 frames: everything up to the last complete one plays.
    assert len(frames) >= 60
    for k, (t, img) in enumerate(frames):
        assert t == Fraction(k, 30)
        assert abs(float(img.mean()) - 2 * k) < 3
    first, audio = decode_audio(path)
    assert first == 0 and len(audio) >= 60 * 1470
    assert peak_hz(audio[:SR]) == pytest.approx(440, abs=2)


def test_mp4_missing_folder_fails_at_open(tmp_path):
    rec = Mp4Recorder(tmp_path / "no" / "such" / "take.mp4")
    with pytest.raises(SinkError, match="does not exist.*mkdir"):
        rec.open(AUDIO, VideoSpec())
    with pytest.raises(OSError):  # callers that handle file errors catch it as one
        Mp4Recorder(tmp_path / "no" / "such" / "take.mp4").open(AUDIO, VideoSpec())


def test_mp4_bad_paths_fail_at_open(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SinkError, match="not a folder"):
        Mp4Recorder(tmp_path / "afile" / "take.mp4").open(AUDIO, VideoSpec())
    with pytest.raises(SinkError, match="is a folder"):
        Mp4Recorder(tmp_path).open(AUDIO, VideoSpec())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_fails_at_open(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SinkError, match="not writable"):
            Mp4Recorder(ro / "take.mp4").open(AUDIO, VideoSpec())
    finally:
        ro.chmod(0o700)


def test_mp4_rejects_wrong_frames_and_skips_repeated_indices(tmp_path):
    video = VideoSpec(fps=30, height=64, width=64)
    rec = Mp4Recorder(tmp_path / "x.mp4", audio=False)
    rec.open(AUDIO, video)
    with pytest.raises(ValueError, match="expected uint8"):
        rec.write_frame(FrameOut(0, 0.0, np.zeros((32, 32, 3), np.uint8), keypoints(0)))
    for i in (0, 1, 1, 2, 0, 3):
        rec.write_frame(frame_out(i, video))
    rec.write_frame(frame_out(5, video, stream=1))  # another stream: not this recorder's
    rec.close()
    rec.close()  # idempotent
    assert rec.frames_written == 4 and rec.frames_skipped == 2
    with av.open(str(tmp_path / "x.mp4")) as c:
        assert len(c.streams.audio) == 0
    assert decode_video_times(tmp_path / "x.mp4") == [Fraction(i, 30) for i in range(4)]
