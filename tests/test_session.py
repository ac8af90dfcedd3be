"""The Qt-free session pieces the window uses: the newest-frame handoff and the session
sinks that put every engine run on one timeline (recording included).

Frames are synthetic FrameOut objects with real RGB arrays; recordings are real MP4 files
read back with PyAV. No Qt is imported."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.session import LatestFrame, SessionSinks
from letsplay.realtime.sinks import CallbackSink, FrameOut

KP = np.zeros((67, 2), np.float32)


def frame(i: int, video: VideoSpec, *, t: float | None = None, stream: int = 0) -> FrameOut:
    img = np.full((video.height, video.width, 3), (8 * i) % 256, np.uint8)
    return FrameOut(i, i / video.fps if t is None else t, img, KP, stream=stream)


def run(s: SessionSinks, audio: AudioSpec, video: VideoSpec, n_frames: int) -> None:
    """One engine run as the engine drives it: open, audio then its frame, close."""
    per_frame = round(audio.sample_rate / video.fps)
    s.open(audio, video)
    for i in range(n_frames):
        s.write_audio(np.zeros(per_frame, np.float32), i * per_frame)
        s.write_frame(frame(i, video))
    s.close()


def video_times(path) -> list[Fraction]:
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(c.streams.video[0])]


def test_session_module_does_not_import_qt():
    # In a fresh interpreter: pytest-qt may already have imported Qt into this one.
    code = "import sys, letsplay.realtime.session; print(sorted(m for m in sys.modules if m.startswith('PyQt')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_latest_frame_keeps_only_the_newest():
    slot = LatestFrame()
    video = VideoSpec(height=8, width=8)
    assert slot.take() is None
    for i in range(3):
        slot.write_frame(frame(i, video))
    slot.write_frame(frame(9, video, stream=1))  # another stream: not shown
    assert slot.take().index == 2
    assert slot.take() is None
    assert (slot.received, slot.replaced) == (3, 2)


def test_session_sinks_follow_on_across_runs():
    """A second run's frame 0 and sample 0 land after the first run's end."""
    seen = []

    class Probe:
        def open(self, audio, video):
            seen.append(("open",))

        def write_frame(self, f):
            seen.append(("frame", f.index, f.time))

        def write_audio(self, x, start):
            seen.append(("audio", start, len(x)))

        def close(self):
            seen.append(("close",))

    s = SessionSinks([Probe()])
    audio, video = AudioSpec(), VideoSpec(height=8, width=8)
    s.open(audio, video)
    s.write_audio(np.zeros(1470 * 3, np.float32), 0)
    s.write_frame(frame(2, video))
    s.close()  # end of run 1: nothing is closed
    s.open(audio, video)  # run 2 starts at frame 3 = sample 4410
    s.write_audio(np.zeros(10, np.float32), 0)
    s.write_frame(frame(0, video))
    s.finish()
    assert seen == [("open",), ("audio", 0, 4410), ("frame", 2, 2 / 30), ("audio", 4410, 10),
                    ("frame", 3, 0.1), ("close",)]


def test_recording_spans_runs_as_one_continuous_file(tmp_path):
    audio, video = AudioSpec(), VideoSpec(fps=30, height=32, width=32)
    got: list[int] = []
    s = SessionSinks([CallbackSink(lambda f: got.append(f.index))])
    path = s.start_recording(tmp_path / "take.mp4")  # armed: opens with the first run
    assert path == tmp_path / "take.mp4" and s.recording_path == path and s.recorder is None
    run(s, audio, video, 5)
    assert s.recorder is not None and s.recorder.path == path
    run(s, audio, video, 4)  # a new engine run (another device...): its frame 0 follows on
    rec = s.stop_recording()
    assert rec is not None and rec.frames_written == 9 and s.failure is None
    assert s.stop_recording() is None  # nothing records any more
    s.finish()
    assert got == list(range(9))
    assert video_times(path) == [Fraction(i, 30) for i in range(9)]


def test_a_run_with_another_frame_size_stops_the_recording(tmp_path):
    audio = AudioSpec()
    small, large = VideoSpec(fps=30, height=32, width=32), VideoSpec(fps=30, height=48, width=48)
    s = SessionSinks()
    run(s, audio, small, 3)
    s.start_recording(tmp_path / "take.mp4")
    run(s, audio, small, 3)
    run(s, audio, large, 2)  # the recording cannot change size mid-file
    assert s.recorder is None and "another size or rate" in s.failure
    s.finish()
    # The recording started on the session timeline at frame 3 (file time 0) and kept its 3 frames.
    assert video_times(tmp_path / "take.mp4") == [Fraction(i, 30) for i in range(3)]


def test_a_failing_recording_stops_but_the_other_sinks_go_on(tmp_path):
    audio, video = AudioSpec(), VideoSpec(fps=30, height=32, width=32)
    got: list[int] = []
    s = SessionSinks([CallbackSink(lambda f: got.append(f.index))])
    s.start_recording(tmp_path / "take.mp4")
    s.open(audio, video)
    s.write_frame(frame(0, video))
    bad = FrameOut(1, 1 / 30, np.zeros((8, 8, 3), np.uint8), KP)  # not the size the recording was opened with
    s.write_frame(bad)
    s.write_frame(frame(2, video))
    assert s.recorder is None and "recording to" in s.failure and "expected uint8" in s.failure
    assert got == [0, 1, 2]
    s.finish()
    assert video_times(tmp_path / "take.mp4") == [Fraction(0)]
