"""Sinks: output path checks, keypoints .npz, OSC over real UDP, callbacks and the frame queue, raw pipes, fan-out.

Everything here is real: files are written and read back with PyAV, OSC goes through a
python-osc server on localhost, pipes are OS pipes and child processes. MP4 recording
is tested in tests/test_mp4.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import AUDIO, decode_video_times, frame_out, keypoints, sine, square_frame

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.sinks import (
    CallbackSink,
    FrameOut,
    FrameQueue,
    KeypointsNpz,
    Mp4Recorder,
    MultiSink,
    OscSink,
    RawVideoSink,
    Sink,
    SinkError,
    fps_fraction,
)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_unwritable_folder_fails_at_open_even_for_root():
    # /proc refuses new files for everyone, root included (a chmod-ed folder does not stop root).
    for sink in (Mp4Recorder("/proc/take.mp4"), KeypointsNpz("/proc/kp.npz")):
        with pytest.raises(SinkError, match="not writable"):
            sink.open(AUDIO, VideoSpec())


# --------------------------------------------------------------------------- keypoints


def test_keypoints_npz_round_trip(tmp_path):
    video = VideoSpec(fps=30, height=64, width=64)
    path = tmp_path / "kp.npz"
    sink = KeypointsNpz(path)
    sink.open(AUDIO, video)
    sent = [frame_out(i, video, stream=s) for i in range(20) for s in (0, 1)]
    for f in sent:
        sink.write_frame(f)
    assert not path.exists()  # written at close, in one go
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kp.npz"]  # no temp file left behind

    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"index", "time", "stream", "keypoints", "spec"}
        assert z["keypoints"].shape == (40, 67, 2) and z["keypoints"].dtype == np.float32
        assert np.array_equal(z["index"], [f.index for f in sent])
        assert np.array_equal(z["stream"], [f.stream for f in sent])
        assert np.array_equal(z["time"], [f.time for f in sent])
        assert np.array_equal(z["keypoints"], np.stack([f.keypoints for f in sent]))
        spec = json.loads(str(z["spec"]))
    assert AudioSpec.from_dict(spec["audio"]) == AUDIO
    assert VideoSpec.from_dict(spec["video"]) == video


def test_keypoints_npz_rejects_wrong_shape(tmp_path):
    sink = KeypointsNpz(tmp_path / "kp.npz")
    sink.open(AUDIO, VideoSpec())
    with pytest.raises(ValueError, match=r"\[67, 2\]"):
        sink.write_frame(FrameOut(0, 0.0, np.zeros((256, 256, 3), np.uint8), np.zeros((25, 2), np.float32)))


# --------------------------------------------------------------------------- OSC


def test_osc_one_message_per_frame(caplog):
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import BlockingOSCUDPServer

    got: list[tuple] = []
    dispatcher = Dispatcher()
    dispatcher.map("/letsplay/frame", lambda address, *args: got.append(args))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        video = VideoSpec(fps=30, height=64, width=64)
        sink = OscSink("127.0.0.1", server.server_address[1])
        sink.open(AUDIO, video)
        assert sink._client._sock.getblocking() is False  # a send never stalls the frame loop
        sent = [frame_out(i, video, stream=i % 2) for i in range(30)]
        for f in sent:
            sink.write_frame(f)
        deadline = time.monotonic() + 60  # liveness only: a loaded machine may be slow to deliver
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        sink.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(got) == len(sent) and sink.errors == 0
    for f, args in zip(sent, sorted(got, key=lambda a: a[1]), strict=True):
        assert len(args) == 3 + 134
        assert args[0] == f.stream and args[1] == f.index
        assert args[2] == pytest.approx(f.index / 30, abs=1e-6)
        assert np.array_equal(np.array(args[3:], np.float32), f.keypoints.ravel())  # x0, y0, x1, y1, ...


def test_osc_send_errors_are_counted_not_raised(caplog):
    # Broadcasting without SO_BROADCAST is refused by the OS at sendto(): a real send error.
    sink = OscSink("255.255.255.255", 9000)
    sink.open(AUDIO, VideoSpec(height=64, width=64))
    for i in range(5):
        sink.write_frame(frame_out(i, VideoSpec(height=64, width=64)))
    sink.close()
    assert sink.errors == 5 and sink.sent == 0
    assert "UDP send failed" in caplog.text


# --------------------------------------------------------------------------- callbacks, queue


def test_callback_sink():
    video = VideoSpec(fps=30, height=64, width=64)
    frames, audio = [], []
    sink = CallbackSink(frames.append, on_audio=lambda x, s: audio.append(s))
    assert isinstance(sink, Sink)
    sink.open(AUDIO, video)
    for i in range(3):
        sink.write_frame(frame_out(i, video))
        sink.write_audio(np.zeros(10, np.float32), i * 10)
    sink.close()
    assert [f.index for f in frames] == [0, 1, 2] and audio == [0, 10, 20]


def test_frame_queue_drops_oldest_and_iteration_ends_at_close():
    video = VideoSpec(fps=30, height=64, width=64)
    q = FrameQueue(maxsize=4)
    q.open(AUDIO, video)
    got: list[int] = []

    def consume():
        for f in q:
            got.append(f.index)
            time.sleep(0.005)  # a slow consumer

    t = threading.Thread(target=consume)
    t.start()
    for i in range(100):
        q.write_frame(frame_out(i, video))
    q.close()
    t.join(timeout=10)
    assert not t.is_alive()
    assert got == sorted(got) and got[-1] == 99  # in order, newest kept
    assert q.dropped > 0 and len(got) + q.dropped == 100


def test_frame_queue_get_timeout():
    q = FrameQueue(maxsize=2)
    q.open(AUDIO, VideoSpec())
    assert q.get(timeout=0.01) is None
    q.close()
    assert list(q) == []


# --------------------------------------------------------------------------- raw video


def test_raw_video_bytes_and_gap_filling():
    video = VideoSpec(fps=30, height=32, width=48)
    buf = io.BytesIO()
    sink = RawVideoSink(buf)
    sink.open(AUDIO, video)
    written = [0, 1, 4, 5]  # 2 and 3 dropped: frame 1 is repeated so frame n stays at n / fps
    for i in written:
        sink.write_frame(frame_out(i, video))
    sink.close()
    data = buf.getvalue()
    assert len(data) == 6 * 32 * 48 * 3
    frames = np.frombuffer(data, np.uint8).reshape(6, 32, 48, 3)
    for n, src in enumerate([0, 1, 1, 1, 4, 5]):
        assert np.array_equal(frames[n], square_frame(src, 32, 48))
    assert sink.repeated == 2 and sink.frames_written == 6


def test_raw_video_no_gap_filling():
    video = VideoSpec(fps=30, height=16, width=16)
    buf = io.BytesIO()
    sink = RawVideoSink(buf, fill_gaps=False)
    sink.open(AUDIO, video)
    for i in (0, 3, 4):
        sink.write_frame(frame_out(i, video))
    assert len(buf.getvalue()) == 3 * 16 * 16 * 3


def test_raw_video_stops_quietly_when_the_reader_exits(caplog):
    """Like `letsplay render --raw | head -c 1000`: the reader goes away mid-stream."""
    caplog.set_level(logging.INFO, logger="letsplay.realtime.sinks")
    video = VideoSpec(fps=30, height=64, width=64)
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read(1000)"],
                              stdin=subprocess.PIPE)
    sink = RawVideoSink(reader.stdin)
    sink.open(AUDIO, video)
    sink.write_frame(frame_out(0, video))  # 12 KiB: fits in the pipe's buffer
    reader.wait(timeout=30)  # it has read its 1000 bytes and left
    for i in range(1, 50):
        sink.write_frame(frame_out(i, video))  # must not raise
    sink.close()
    assert sink.broken and sink.frames_written == 1
    assert "closed the pipe" in caplog.text
    try:
        reader.stdin.close()
    except BrokenPipeError:
        pass


def test_raw_video_broken_os_pipe():
    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "wb")
    sink = RawVideoSink(out)
    video = VideoSpec(fps=30, height=16, width=16)
    sink.open(AUDIO, video)
    sink.write_frame(frame_out(0, video))
    sink.write_frame(frame_out(1, video))
    sink.close()
    assert sink.broken and sink.frames_written == 0
    try:
        out.close()
    except BrokenPipeError:
        pass


# --------------------------------------------------------------------------- fan-out


def test_multisink_isolates_failures(tmp_path, caplog):
    video = VideoSpec(fps=30, height=64, width=64)
    calls: list[int] = []

    def flaky(f: FrameOut) -> None:
        calls.append(f.index)
        if f.index == 3:
            raise RuntimeError("boom")

    good: list[int] = []
    q = FrameQueue(maxsize=100)
    rec = Mp4Recorder(tmp_path / "multi.mp4")
    multi = MultiSink([CallbackSink(flaky), rec, q, CallbackSink(lambda f: good.append(f.index))])
    multi.open(AUDIO, video)
    for i in range(10):
        multi.write_audio(sine(i * 1470, 1470), i * 1470)
        multi.write_frame(frame_out(i, video))
    # A wrong-sized frame makes the recorder raise: it is disabled, the rest go on.
    multi.write_frame(FrameOut(10, 10 / 30, np.zeros((8, 8, 3), np.uint8), keypoints(10)))
    multi.write_frame(frame_out(11, video))
    multi.close()

    assert calls == [0, 1, 2, 3]
    assert good == list(range(12))
    assert [f.index for f in q] == list(range(12))
    assert [type(e) for _, e in multi.failed] == [RuntimeError, ValueError]
    assert multi.active == [multi.sinks[2], multi.sinks[3]]
    assert "boom" in caplog.text
    # The disabled recorder was still closed: its 10 good frames are a playable file.
    assert decode_video_times(tmp_path / "multi.mp4") == [Fraction(i, 30) for i in range(10)]


def test_multisink_open_failure_closes_the_opened_ones(tmp_path):
    q = FrameQueue()
    multi = MultiSink([q, KeypointsNpz(tmp_path / "missing" / "kp.npz")])
    with pytest.raises(SinkError, match="does not exist"):
        multi.open(AUDIO, VideoSpec())
    assert q.closed


def test_fps_fraction():
    assert fps_fraction(30) == 30
    assert fps_fraction(29.97) == Fraction(2997, 100)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(23.976) == Fraction(2997, 125)
