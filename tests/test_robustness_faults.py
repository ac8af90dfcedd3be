"""Robustness to faults while running: the input device disappears and comes back, the
backend throws, the disk fills up, the user presses Ctrl-C -- nothing crashes, and what
was recorded stays a valid, playable mp4 whose audio and video end together.

Real wherever a real thing can run: a real PulseAudio server is killed under a live
``letsplay live`` and started again; the disk-full case is a real kernel write error
(``RLIMIT_FSIZE``: writes past the limit fail with EFBIG, as they would with ENOSPC on a
full disk; mounting a small filesystem needs privileges tests do not have); Ctrl-C is a
real SIGINT to a real ``letsplay`` process. Two stand-ins, said where used: a fake
sounddevice module for a 48 kHz USB microphone that is unplugged (a real one cannot be
unplugged here), and a backend subclass that raises on chosen frames.
Already covered elsewhere: one failing frame in a render (tests/test_engine.py), /dev/full
and SIGKILL during a recording, a failing sink disabled while the others go on
(tests/test_sinks.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import music_signal

from benchmarks.pulse import pulse_available, start_pulse
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime import sources
from letsplay.realtime.backends import TorchBackend
from letsplay.realtime.engine import Engine, EngineConfig
from letsplay.realtime.sinks import CallbackSink, FrameOut, Mp4Recorder
from letsplay.realtime.sources import ArraySource, MicSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 44100
ROOT = Path(__file__).parents[1]


def read_mp4(path: Path) -> tuple[list[Fraction], float]:
    """(video frame times, audio seconds), decoding every packet: a damaged one raises."""
    with av.open(str(path)) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        n = sum(f.samples for f in c.decode(audio=0))
    return times, n / SR


def assert_playable(path: Path, fps: int = 30, contiguous: bool = True, min_frames: int = 1) -> int:
    """Frames decode on the 1/fps grid (contiguous from 0, or strictly increasing when
    frames may be dropped) and the audio lasts as long as the video, within one frame."""
    times, audio_s = read_mp4(path)
    assert len(times) >= min_frames, len(times)
    idx = [t * fps for t in times]
    assert all(i.denominator == 1 for i in idx), idx[:5]
    if contiguous:
        assert idx == list(range(len(idx)))
    else:
        assert idx[0] == 0 and all(b > a for a, b in zip(idx, idx[1:], strict=False))
    video_s = float(times[-1]) + 1 / fps
    assert abs(audio_s - video_s) <= 1 / fps, (audio_s, video_s)
    return len(times)


class StderrReader:
    """Collects a child's stderr on a thread; the live status line is rewritten with \\r."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self._t = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._t.start()

    def _run(self, proc) -> None:
        for ch in iter(lambda: proc.stderr.read(1), ""):
            self.text += ch

    def frames(self) -> int:
        n = re.findall(r"(\d+) frames", self.text)
        return int(n[-1]) if n else 0

    def last_status(self) -> str:
        """The newest status line (other output -- logs, ALSA's complaints -- interleaves)."""
        lines = re.findall(r"\d+ frames[^\r\n]*", self.text)
        return lines[-1] if lines else ""

    def wait(self, cond, timeout: float, proc: subprocess.Popen, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert proc.poll() is None, f"letsplay exited early ({what}): {self.text[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.text[-3000:]}"
            time.sleep(0.05)

    def join(self) -> None:
        self._t.join(5)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


# --------------------------------------------------------------------------- the input device


class FakeSoundDevice:
    """Stand-in for the ``sounddevice`` module (a real device cannot be unplugged here): one
    stereo USB microphone that only captures at 48 kHz, whose stream delivers a tone at
    real-time pace from a thread. ``unplug()`` aborts the stream as PortAudio does (the
    stream goes inactive, ``finished_callback`` runs) and makes every open fail until
    ``plug()``."""

    class PortAudioError(Exception):
        pass

    def __init__(self, rate: int = 48000) -> None:
        self.rate = rate
        self.plugged = True
        self.open_attempts = 0
        self.streams: list[FakeStream] = []
        self.open_frozen = False  # new streams open "active" but deliver nothing (a source with no data yet)

    def query_devices(self, device=None, kind=None):
        d = {"name": "Fake USB Mic", "max_input_channels": 2, "max_output_channels": 0,
             "default_samplerate": float(self.rate), "hostapi": 0}
        return d if (device is not None or kind is not None) else [d]

    def query_hostapis(self, i):
        return {"name": "fake"}

    def check_input_settings(self, device=None, channels=None, samplerate=None, dtype=None):
        if not self.plugged or samplerate != self.rate:
            raise self.PortAudioError(f"Invalid sample rate {samplerate}")

    def InputStream(self, **kw):  # noqa: N802 - the sounddevice name
        self.open_attempts += 1
        if not self.plugged:
            raise self.PortAudioError("Error opening InputStream: Device unavailable [PaErrorCode -9985]")
        s = FakeStream(self, **kw)
        s.frozen = self.open_frozen
        self.streams.append(s)
        return s

    def unplug(self) -> None:
        self.plugged = False
        for s in self.streams:
            s.abort()

    def plug(self) -> None:
        self.plugged = True

    def freeze(self) -> None:
        """The open streams stay "active" but deliver nothing (a sound server that died
        without PortAudio noticing)."""
        for s in self.streams:
            s.frozen = True

    def thaw(self) -> None:
        """Every stream delivers again, and new ones from the start."""
        self.open_frozen = False
        for s in self.streams:
            s.frozen = False


class FakeStream:
    def __init__(self, dev: FakeSoundDevice, samplerate, channels, callback, finished_callback, blocksize=256,
                 **_):
        assert samplerate == dev.rate, "MicSource must open the device at the rate it supports"
        self.rate, self.channels = int(samplerate), channels
        self.callback, self.finished = callback, finished_callback
        self.block = 1024
        self.frozen = False
        self._run = False
        self._thread: threading.Thread | None = None
        self.t = 0

    @property
    def active(self) -> bool:
        return self._run

    def start(self) -> None:
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.monotonic()
        status = types.SimpleNamespace(input_overflow=False)
        while self._run:
            due = (self.t + self.block) / self.rate - (time.monotonic() - t0)
            if due > 0:
                time.sleep(due)
            x = 0.3 * np.sin(2 * np.pi * 440 * (self.t + np.arange(self.block)) / self.rate).astype(np.float32)
            if self._run and not self.frozen:
                self.callback(np.repeat(x[:, None], self.channels, axis=1), self.block, None, status)
            self.t += self.block

    def abort(self) -> None:
        if self._run:
            self._run = False
            self.finished()

    def stop(self) -> None:
        if self._run:
            self._run = False
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(1)
            self.finished()

    def close(self) -> None:
        pass


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _live_on_fake_mic(performer, monkeypatch):
    """A live engine capturing from a fake 48 kHz USB microphone, started: (fake, source,
    engine, the frames it has made so far)."""
    fake = FakeSoundDevice(48000)
    monkeypatch.setattr(sources, "_sounddevice", lambda: fake)
    frames: list[FrameOut] = []
    src = MicSource(SR, reopen_s=0.0)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, src,
                 [CallbackSink(frames.append)], EngineConfig(realtime=True))
    eng.start()
    return fake, src, eng, frames


def test_mic_unplugged_and_back_engine_keeps_running(performer, monkeypatch, caplog):
    """A 48 kHz USB microphone (fake, see FakeSoundDevice) is unplugged mid-stream: the live
    engine keeps running and reports ``device_lost``; MicSource retries (here at every
    read: ~50 failed reopens) without its ring growing; plugged back, capture resumes at
    the device's rate, ``device_lost`` clears, frames come again, all counted."""
    caplog.set_level(logging.INFO)
    fake, src, eng, frames = _live_on_fake_mic(performer, monkeypatch)
    try:
        _wait(lambda: len(frames) >= 15, 60, "frames from the microphone")
        assert src._resampler is not None  # 48 kHz captured, resampled to 44.1 kHz
        capacity = src.ring.capacity
        assert not eng.stats.device_lost

        fake.unplug()
        _wait(lambda: eng.stats.device_lost, 10, "device_lost")
        attempts = fake.open_attempts
        _wait(lambda: fake.open_attempts >= attempts + 50, 30, "reopen attempts")
        assert eng.running and eng.error is None
        snap = eng.stats_dict()
        assert snap["device_lost"] is True and snap["input"]["lost"] == 1
        assert src.ring.capacity == capacity  # retrying does not grow the ring
        n_lost = len(frames)
        clock = eng.stats.audio_samples
        time.sleep(0.3)
        assert len(frames) <= n_lost + 1  # no audio, no new frames (at most the one in flight)
        assert eng.stats.audio_samples == clock  # the clock waits for the device

        fake.plug()
        _wait(lambda: not eng.stats.device_lost and len(frames) >= n_lost + 15, 60, "capture to resume")
        assert src.stats.lost == 1 and src.stats.reopened == 1
        assert src.ring.capacity == capacity and src._resampler is not None
        assert eng.stats.audio_samples > clock
    finally:
        eng.stop()
    assert eng.error is None
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))
    text = caplog.text
    assert "input device 'Fake USB Mic' is gone; retrying" in text and "input device 'Fake USB Mic' is back" in text
    # 50+ failed reopens within a minute: the loss and the recovery once each, no line per retry
    mine = [r for r in caplog.records if r.name == sources.__name__]
    assert [r.levelno for r in mine if "is gone" in r.message] == [logging.WARNING]
    assert [r.levelno for r in mine if "is back" in r.message] == [logging.WARNING]
    assert len([r for r in mine if "still unavailable" in r.message]) <= 1


def test_an_input_that_goes_silent_while_active_is_lost_and_reopened(performer, monkeypatch):
    """A stream PortAudio still calls active but that delivers nothing (its sound server died
    unnoticed) is treated as lost after STALL_S seconds, reopened, and capture resumes."""
    fake, src, eng, frames = _live_on_fake_mic(performer, monkeypatch)
    try:
        _wait(lambda: len(frames) >= 15, 60, "frames from the microphone")
        fake.freeze()
        assert fake.streams[-1].active
        _wait(lambda: src.stats.lost == 1, sources.STALL_S + 10, "the silent stream to count as lost")
        n = len(frames)
        _wait(lambda: src.stats.reopened >= 1 and len(frames) >= n + 15, 60, "capture to resume")
        assert len(fake.streams) >= 2 and not fake.streams[-1].frozen
    finally:
        eng.stop()
    assert eng.error is None


def test_a_reopened_input_that_stays_silent_is_one_outage_until_audio_flows(performer, monkeypatch, caplog):
    """The sound server comes back before anything plays into its source: the reopened
    stream delivers nothing and stalls again, and again. That is one outage -- one loss
    counted, "is gone" and "is back" logged once each, and the device reported lost -- until
    audio flows; not a loss and a recovery every STALL_S seconds."""
    caplog.set_level(logging.INFO)
    fake, src, eng, frames = _live_on_fake_mic(performer, monkeypatch)
    try:
        _wait(lambda: len(frames) >= 15, 60, "frames from the microphone")
        fake.open_frozen = True
        fake.freeze()
        _wait(lambda: src.stats.lost == 1, sources.STALL_S + 10, "the silent stream to count as lost")
        _wait(lambda: src.stats.reopened >= 2, 3 * sources.STALL_S + 20, "two reopens that stay silent")
        assert src.stats.lost == 1 and eng.stats.device_lost  # still the one outage
        n = len(frames)
        fake.thaw()
        _wait(lambda: not eng.stats.device_lost and len(frames) >= n + 15, 60, "capture to resume")
        assert src.stats.lost == 1
    finally:
        eng.stop()
    assert eng.error is None
    mine = [r for r in caplog.records if r.name == sources.__name__]
    assert [r.levelno for r in mine if "is gone" in r.message] == [logging.WARNING]
    assert [r.levelno for r in mine if "is back" in r.message] == [logging.WARNING]


def test_outage_log_says_it_once_then_once_a_minute_with_a_count(caplog):
    """A night-long outage retried every second: one WARNING, then one INFO line a minute
    with how many attempts failed, one WARNING when it is over; the next outage starts afresh."""
    now = [1000.0]
    lg = logging.getLogger("letsplay.test.outage")
    out = sources.OutageLog(lg, every_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger=lg.name)
    out.recovered("fine")  # nothing was wrong: nothing to say
    assert not out.active and not caplog.records
    for _ in range(8 * 3600):  # eight hours, a try every second
        out.failed("device gone")
        now[0] += 1.0
    recs = caplog.records
    assert recs[0].levelno == logging.WARNING and recs[0].getMessage() == "device gone"
    assert all(r.levelno == logging.INFO for r in recs[1:]) and len(recs) - 1 == 8 * 60 - 1
    assert "61 attempts in 60 s" in recs[1].getMessage()
    out.recovered("device back")
    assert caplog.records[-1].levelno == logging.WARNING and "28800 failed attempts" in caplog.records[-1].getMessage()
    caplog.clear()
    out.failed("gone again")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "gone again")]


def test_quiet_c_stderr_silences_fd_2_and_restores_it(tmp_path):
    """What C code writes to file descriptor 2 inside the block is dropped; before and
    after, fd 2 is the same file."""
    code = ("import os\n"
            "from letsplay.realtime.sources import quiet_c_stderr\n"
            "os.write(2, b'before\\n')\n"
            "with quiet_c_stderr():\n"
            "    os.write(2, b'ALSA lib pcm.c: from C\\n')\n"
            "os.write(2, b'after\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr == b"before\nafter\n"


def test_quiet_c_stderr_keeps_what_python_prints_meanwhile(tmp_path):
    """While a device retry silences fd 2 for C, another thread's Python output (the live
    status line, a log record) still arrives: the status line used to vanish for as long
    as a device outage's retries ran."""
    code = ("import logging, os, sys, threading, time\n"
            "from letsplay.realtime.sources import quiet_c_stderr\n"
            "logging.basicConfig(format='%(message)s')\n"
            "inside, done = threading.Event(), threading.Event()\n"
            "def status():\n"
            "    inside.wait()\n"
            "    print('status line', file=sys.stderr, flush=True)\n"
            "    logging.getLogger('x').warning('a log record')\n"
            "    done.set()\n"
            "threading.Thread(target=status).start()\n"
            "with quiet_c_stderr():\n"
            "    inside.set()\n"
            "    done.wait(10)\n"
            "    os.write(2, b'ALSA lib pcm.c: from C\\n')\n"
            "print('after', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"status line\na log record\nafter\n"


def _pulse_bed(env: dict[str, str]) -> subprocess.Popen:
    # a null sink's monitor only flows while something plays into the sink
    return subprocess.Popen(["paplay", "--raw", "/dev/zero"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.skipif(not pulse_available(), reason="PulseAudio (pulseaudio, pactl, paplay) not installed")
def test_live_survives_the_sound_server_dying_and_ctrl_c_leaves_a_playable_mp4(tiny_ckpt, tmp_path):
    """`letsplay live --device pulse --record`: the PulseAudio server is killed mid-stream
    (the capture device really disappears: PortAudio aborts the stream). The process keeps
    running and its status line says INPUT DEVICE LOST; the server comes back, capture
    resumes, frames continue. Then Ctrl-C (SIGINT): exit 0, the statistics count one loss
    and a reopen, and the recording is a valid mp4 whose audio and video end together."""
    folder = tmp_path / "pulse"
    server, penv = start_pulse(folder)
    env = child_env(**penv)
    bed = _pulse_bed(env)
    out, stats = tmp_path / "live.mp4", tmp_path / "stats.json"
    live = subprocess.Popen(
        [sys.executable, "-m", "letsplay.ui.cli", "live", "--device", "pulse", "--record", str(out),
         "--performer", str(tiny_ckpt), "--backend", "torch", "--no-window", "--stats", str(stats)],
        env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    err = StderrReader(live)
    try:
        err.wait(lambda: err.frames() >= 30, 90, live, "frames from the device")
        server.kill()
        server.wait(10)
        bed.kill()
        err.wait(lambda: "INPUT DEVICE LOST" in err.last_status(), 30, live, "the loss to be reported")
        at_loss = err.frames()
        assert live.poll() is None  # still running
        server, _ = start_pulse(folder)
        bed = _pulse_bed(env)
        err.wait(lambda: "LOST" not in err.last_status() and err.frames() >= at_loss + 30, 90, live,
                 "capture to resume")
        live.send_signal(signal.SIGINT)
        live.wait(60)
        err.join()
        assert live.returncode == 0, err.text[-3000:]
    finally:
        if live.poll() is None:
            live.kill()
        bed.kill()
        server.kill()
    assert "Traceback" not in err.text and "recorded" in err.text
    # the outage in the log: the loss once, the recovery once, and none of the C libraries'
    # lines per retry (about six a try before); PortAudio's audio thread still reports the
    # broken stream itself, once, at the moment of the loss
    lines = err.text.replace("\r", "\n").splitlines()
    assert sum("is gone; retrying" in x for x in lines) == 1 and sum("is back" in x for x in lines) == 1
    noise = [x for x in lines if x.startswith(("ALSA lib", "Expression '", "PaAlsa", "pa_")) or "pulse.c" in x]
    assert len(noise) <= 3, noise[:40]
    s = json.loads(stats.read_text())
    assert s["input"]["lost"] == 1 and s["input"]["reopened"] >= 1 and s["device_lost"] is False
    assert s["errors"] == 0
    n = assert_playable(out, contiguous=False, min_frames=60)
    assert n <= s["frames"]


# --------------------------------------------------------------------------- the backend


class FailingBackend(TorchBackend):
    """The real torch backend, raising on chosen frame numbers (a stand-in for a GPU error)."""

    def __init__(self, p, fail: set[int]):
        super().__init__(p)
        self.fail, self.calls = fail, 0

    def step(self, feeds):
        self.calls += 1
        if self.calls - 1 in self.fail:
            raise RuntimeError(f"simulated CUDA error on call {self.calls - 1}")
        return super().step(feeds)


def test_backend_errors_while_recording_leave_gaps_not_a_broken_file(performer, tmp_path, caplog):
    """The backend throws on the very first frame and on a burst of five: each is logged,
    counted and skipped, the stream goes on, and the recording keeps exact timestamps
    (a gap where frames failed) with audio and video ending together."""
    fail = {0, 10, 11, 12, 13, 14}
    out = tmp_path / "gaps.mp4"
    frames: list[FrameOut] = []
    eng = Engine(FailingBackend(performer, fail), performer.cfg.audio, performer.cfg.video,
                 ArraySource(music_signal(2.0, seed=11), SR), [Mp4Recorder(out), CallbackSink(frames.append)],
                 EngineConfig(realtime=False))
    caplog.set_level(logging.ERROR)
    stats = eng.run()
    assert stats["errors"] == len(fail) and stats["frames"] == 60 - len(fail)
    assert [f.index for f in frames] == [i for i in range(60) if i not in fail]
    assert caplog.text.count("frame skipped, stream goes on") == len(fail)
    assert "backend failed on frame 0 (RuntimeError: simulated CUDA error" in caplog.text
    times, audio_s = read_mp4(out)
    assert [t * 30 for t in times] == [i - 1 for i in range(1, 60) if i not in fail]  # file time 0 = frame 1
    assert abs(audio_s - (float(times[-1]) + 1 / 30)) <= 1 / 30


# --------------------------------------------------------------------------- the disk

FULL_DISK = textwrap.dedent("""
    import json, logging, resource, signal, sys
    import torch
    sys.path.insert(0, "tests")
    from helpers import music_signal
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset
    from letsplay.realtime.backends import TorchBackend
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sinks import CallbackSink, Mp4Recorder
    from letsplay.realtime.sources import ArraySource

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    p = Performer(preset("tiny")).eval()
    x = music_signal(10.0, seed=1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rec, seen = Mp4Recorder(sys.argv[1]), []
    eng = Engine(TorchBackend(p), p.cfg.audio, p.cfg.video, ArraySource(x, 44100),
                 [rec, CallbackSink(lambda f: seen.append(f.index))], EngineConfig(realtime=False))
    stats = eng.run()
    print(json.dumps({"frames": stats["frames"], "errors": stats["errors"], "seen": len(seen),
                      "recorded": rec.frames_written}))
""")


def test_disk_full_mid_recording_keeps_a_playable_file_and_the_engine_going(tmp_path):
    """10 s rendered to an mp4 whose file may not grow past 120 kB (RLIMIT_FSIZE, a real
    EFBIG from the kernel -- what a full disk gives as ENOSPC). The recorder fails with a
    clear message and is disabled, the engine renders every frame for the other sink,
    and the recording is cut back to its last complete fragment: every packet decodes,
    timestamps are exact, audio and video end together."""
    out = tmp_path / "full.mp4"
    limit = 120_000
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(out), str(limit)], capture_output=True, text=True,
                       cwd=ROOT, env=child_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["frames"] == got["seen"] == 300 and got["errors"] == 0
    assert 0 < got["recorded"] < 300
    assert "is the disk full or the drive gone?" in r.stderr and "is disabled; the other sinks go on" in r.stderr
    assert out.stat().st_size <= limit
    n = assert_playable(out, min_frames=30)
    assert n <= got["recorded"]


# --------------------------------------------------------------------------- stopping mid-block


def test_recording_stopped_between_an_audio_block_and_its_frames_ends_together(tmp_path):
    """The engine writes an audio block, then the frames it completes. Stopped in between
    (Ctrl-C, Engine.stop), the recorder has audio up to ~3 frames past the last frame:
    it was held back, and close cuts it, so both tracks end together."""
    video = VideoSpec(fps=30, height=64, width=64)
    path = tmp_path / "stop.mp4"
    rec = Mp4Recorder(path)
    rec.open(AudioSpec(), video)
    block, frame = 4096, 0
    kp = np.zeros((67, 2), np.float32)
    for k in range(20):
        rec.write_audio(music_signal(block / SR, seed=k), k * block)
        if k == 19:
            break  # stopped here: this block's frames never come
        while (frame + 1) / 30 * SR <= (k + 1) * block:
            rec.write_frame(FrameOut(frame, frame / 30, np.full((64, 64, 3), frame % 255, np.uint8), kp))
            frame += 1
    rec.close()
    assert rec.audio_samples_cut > SR / 30  # more than a frame of audio had run ahead
    assert assert_playable(path) == frame


# --------------------------------------------------------------------------- Ctrl-C


def _interrupt_when(proc: subprocess.Popen, err: StderrReader, cond, what: str, sig=signal.SIGINT) -> None:
    err.wait(cond, 120, proc, what)
    proc.send_signal(sig)
    proc.wait(60)
    err.join()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_render_leaves_a_playable_mp4(tiny_ckpt, tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM (kill, systemd) while `letsplay render song.wav -o out.mp4`
    runs: exit 130 with a one-line "interrupted", and the partial mp4 holds every frame from 0
    on, audio and video ending together."""
    wav = tmp_path / "song.wav"
    sf.write(wav, np.tile(music_signal(5.0, seed=12), 12), SR, subtype="FLOAT")  # 60 s
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "letsplay.ui.cli", "render", str(wav), "-o", str(out),
                             "--performer", str(tiny_ckpt), "--backend", "torch"],
                            env=child_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    err = StderrReader(proc)
    out = tmp_path / "out.partial.mp4"  # an interrupted render keeps its partial name
    _interrupt_when(proc, err, lambda: out.exists() and out.stat().st_size > 30_000, "the mp4 to grow", sig)
    assert proc.returncode == 130, err.text[-3000:]
    assert "interrupted" in err.text and "Traceback" not in err.text and str(out) in err.text
    assert assert_playable(out, min_frames=30) < 1800  # really interrupted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_headless_demo_leaves_a_playable_mp4(tiny_ckpt, tmp_path, sig):
    """SIGINT or SIGTERM while `letsplay demo --no-window --no-play --record demo.mp4` runs
    (live mode, paced by the wall clock, no audio device): exit 0 and a valid recording."""
    out = tmp_path / "demo.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "letsplay.ui.cli", "demo", "--no-window", "--no-play",
                             "--record", str(out), "--performer", str(tiny_ckpt), "--backend", "torch"],
                            env=child_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    err = StderrReader(proc)
    _interrupt_when(proc, err, lambda: err.frames() >= 45, "45 frames", sig)
    assert proc.returncode == 0, err.text[-3000:]
    assert "Traceback" not in err.text and "recorded the demo" in err.text
    assert assert_playable(out, contiguous=False, min_frames=30) >= 30
