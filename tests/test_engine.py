"""The engine: frames from a streamed file equal the offline Performer run; the clock,
latency bookkeeping, dropping when behind, faults."""

import os
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import SR, RandomChunks, music_signal, offline_frames

from letsplay.models.features import CQT, frame_windows, frames_available
from letsplay.models.stepping import next_state, state_in_name
from letsplay.realtime.backends import TorchBackend
from letsplay.realtime.engine import Engine, EngineConfig, to_uint8_rgb
from letsplay.realtime.sinks import CallbackSink, RawVideoSink
from letsplay.realtime.sources import ArraySource, FileSource


def collect(engine):
    frames = []
    engine.sinks.append(CallbackSink(frames.append))
    stats = engine.run()
    return frames, stats


def test_render_equals_offline_performer(performer):
    x = music_signal(2.0, seed=5)
    ref_frames, ref_kp = offline_frames(performer, x)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, RandomChunks(x),
                 config=EngineConfig(realtime=False))
    frames, stats = collect(eng)
    assert len(frames) == len(ref_frames) == 60  # 2 s of video: frames 0..59
    assert [f.index for f in frames] == list(range(60))
    assert frames[45].time == pytest.approx(1.5)
    for f in frames:
        assert np.array_equal(f.frame, to_uint8_rgb(ref_frames[f.index]))
        assert np.array_equal(f.keypoints, ref_kp[f.index])
    assert stats["dropped"] == 0 and stats["errors"] == 0
    assert stats["audio_seconds"] == pytest.approx(2.0)


def test_file_source_render(performer, tmp_path):
    x = music_signal(1.0, seed=6)
    p = tmp_path / "a.wav"
    sf.write(p, x, SR, subtype="FLOAT")
    ref_frames, _ = offline_frames(performer, x)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, FileSource(p, SR, block=777),
                 config=EngineConfig(realtime=False))
    frames, _ = collect(eng)
    assert len(frames) == len(ref_frames)
    assert all(np.array_equal(f.frame, to_uint8_rgb(ref_frames[f.index])) for f in frames)


class SlowBackend(TorchBackend):
    """A backend slower than the frame rate (a fixed sleep per step) that records, for each
    step, the engine's audio clock, the window and state it was fed and what it returned."""

    def __init__(self, p, delay):
        super().__init__(p)
        self.delay = delay
        self.engine = None
        self.calls = []  # (audio samples at the step, feeds, outputs)

    def step(self, feeds):
        time.sleep(self.delay)
        out = super().step(feeds)
        self.calls.append((self.engine.stats.audio_samples, {k: v.copy() for k, v in feeds.items()}, out))
        return out


def test_live_drops_stale_frames_when_behind(performer):
    """A backend slower than the frame rate: stale frames are counted and never computed,
    each rendered frame is the newest its audio allows (nothing queues), sees its own
    window, and carries the state of the frame rendered before it."""
    x = music_signal(2.0, seed=7)
    backend = SlowBackend(performer, 0.08)  # >= 2.4 frame periods per step, on any machine
    eng = Engine(backend, performer.cfg.audio, performer.cfg.video,
                 ArraySource(x, SR, realtime=True, block=512), config=EngineConfig(realtime=True))
    backend.engine = eng
    frames, stats = collect(eng)
    # every frame of the 2 s is accounted for, and a dropped frame is never computed
    assert stats["frames"] + stats["dropped"] == 60 and stats["errors"] == 0
    assert len(frames) == len(backend.calls) == stats["frames"]
    # a step outlasts two frame periods, so after each rendered frame at least one is stale
    assert stats["dropped"] >= stats["frames"] - 2 and stats["dropped"] > 0
    idx = [f.index for f in frames]
    assert all(a < b for a, b in zip(idx, idx[1:], strict=False))
    cqt = CQT(performer.cfg.audio)
    with torch.inference_mode():
        windows = frame_windows(cqt(torch.from_numpy(x)), performer.cfg.audio, performer.cfg.video, 60).numpy()
    state = backend.init_state(1)
    for f, (clock, feeds, out) in zip(frames, backend.calls, strict=True):
        # the newest frame the audio received so far completes: no backlog is worked off
        assert f.index == frames_available(clock, cqt, performer.cfg.video) - 1
        assert np.allclose(feeds["window"][0], windows[f.index], atol=1e-5)
        for k, v in state.items():  # the state goes on from the last rendered frame
            assert np.array_equal(feeds[state_in_name(k)], v)
        state = next_state(out, state)
        assert np.array_equal(f.frame, to_uint8_rgb(out["frame"][0]))


class FlakyBackend(TorchBackend):
    def step(self, feeds):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 10:
            raise RuntimeError("simulated failure")
        return super().step(feeds)


def test_backend_failure_skips_one_frame(performer):
    x = music_signal(1.0, seed=8)
    eng = Engine(FlakyBackend(performer), performer.cfg.audio, performer.cfg.video, ArraySource(x, SR),
                 config=EngineConfig(realtime=False))
    frames, stats = collect(eng)
    assert stats["errors"] == 1
    assert len(frames) == 29 and 9 not in [f.index for f in frames]


class ClockedSource(ArraySource):
    """An ArraySource that notes, at each read, the wall time since just before it started
    and the samples it has delivered so far."""

    def start(self):
        self.t0 = time.monotonic()
        self.reads = []
        super().start()

    def read(self, timeout=0.05):
        x, start = super().read(timeout)
        self.reads.append((time.monotonic() - self.t0, start + len(x)))
        return x, start


def test_realtime_file_pace_and_latency(performer):
    x = music_signal(1.5, seed=9)
    src = ClockedSource(x, SR, realtime=True, block=256)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, src)
    frames, stats = collect(eng)
    # real-time pace: the source never hands out audio before its time has come
    assert src.reads[-1][1] == len(x)
    assert all(delivered <= elapsed * SR + 1 for elapsed, delivered in src.reads)
    # every frame of 1.5 s is accounted for: rendered, or dropped when the machine was busy
    assert stats["frames"] + stats["dropped"] == 45 == len(frames) + stats["dropped"]
    assert len(frames) >= 1  # how many depends on how busy the machine is
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))
    # one latency per rendered frame, each positive (its size is a benchmark: benchmarks/latency.py)
    assert stats["latency_ms"]["n"] == len(frames) == len(eng.stats.latency_ms)
    assert min(eng.stats.latency_ms) > 0


def test_request_stop_from_a_sink_computes_no_more_frames(performer):
    """A render whose sink asks the engine to stop at frame 5 (as --raw does when its reader
    goes away) ends there: frames 0..5 computed, none after."""
    x = music_signal(2.0, seed=10)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, ArraySource(x, SR),
                 config=EngineConfig(realtime=False))
    frames = []
    eng.sinks.append(CallbackSink(lambda f: (frames.append(f.index), f.index == 5 and eng.request_stop())))
    stats = eng.run()
    assert frames == list(range(6)) and stats["frames"] == 6 and stats["dropped"] == 0


def test_raw_reader_gone_stops_the_render(performer):
    """Raw frames into a pipe nobody reads any more: the first write fails, the sink stops
    the engine, and no other frame is computed."""
    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "wb")
    x = music_signal(2.0, seed=11)
    eng = Engine(TorchBackend(performer), performer.cfg.audio, performer.cfg.video, ArraySource(x, SR),
                 config=EngineConfig(realtime=False))
    raw = RawVideoSink(out, on_broken=eng.request_stop)
    eng.sinks.append(raw)
    stats = eng.run()
    assert raw.broken and raw.frames_written == 0 and stats["frames"] == 1
    try:
        out.close()
    except BrokenPipeError:
        pass
