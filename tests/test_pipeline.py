"""The pipelined step: a frame as a stateful front half and a stateless back half.

The halves compose to exactly the fused step (torch, every ablation), the exported
front/back graphs give the fused graph's outputs, and the engine running the halves on
two threads renders the same frames as the offline Performer, records in sync, counts a
failing back half as one skipped frame, drains on stop and refuses a backend without
halves."""

import json
import shutil
import time

import av
import numpy as np
import pytest
import torch
from helpers import RandomChunks, music_signal, offline_frames

from letsplay.export.onnx import export_onnx, sha256_file
from letsplay.models.performer import Performer
from letsplay.models.presets import ABLATIONS, ablate, preset
from letsplay.models.stepping import STATE_IN, feeds, mid_name, next_state
from letsplay.realtime.backends import (
    BackendError,
    BackendOptions,
    OrtBackend,
    TorchBackend,
    auto_pipeline,
    describe,
    open_backend,
    pipelined,
    usable_cores,
)
from letsplay.realtime.engine import Engine, EngineConfig, to_uint8_rgb
from letsplay.realtime.performers import export_cache_folder, resolve_performer
from letsplay.realtime.sinks import CallbackSink, Mp4Recorder
from letsplay.realtime.sources import ArraySource

SR = 44100


@pytest.mark.parametrize("variant", [None, *ABLATIONS])
def test_front_then_back_is_exactly_the_step(variant):
    torch.manual_seed(1)
    cfg = preset("tiny") if variant is None else ablate(preset("tiny"), variant)
    p = Performer(cfg).eval()
    g = torch.Generator().manual_seed(2)
    s1 = s2 = p.init_state(2)
    with torch.inference_mode():
        for _ in range(4):
            w = torch.rand(2, cfg.audio.n_bins, cfg.audio.window_columns, generator=g)
            a, s1 = p.step(w, s1)
            f, s2 = p.step_front(w, s2)
            b = p.step_back(f)
            for x, y in zip(a, b, strict=True):
                assert (x is None and y is None) or torch.equal(x, y)
            for k, v in s1.to_dict().items():
                assert torch.equal(v, s2.to_dict()[k])


@pytest.fixture(scope="module")
def exported_pair(tiny_export):
    return tiny_export[0]


def test_front_back_graphs_give_the_fused_graph(exported_pair):
    """Free-running 40 frames, each backend on its own state: the pair follows the fused
    graph (the same operators, cut in two)."""
    fused, pair = OrtBackend(exported_pair), OrtBackend(exported_pair, pipeline=True)
    assert pipelined(pair) and not pipelined(fused)
    assert describe(pair).endswith("pipelined front/back")
    m = json.loads((exported_pair / "manifest.json").read_text())["graphs"]
    assert [t["name"] for t in m["back"]["outputs"]] == ["frame"]
    assert not any(t["name"].startswith(STATE_IN) for t in m["back"]["inputs"])  # the back is stateless
    rng = np.random.default_rng(3)
    sa = sb = fused.init_state(1)
    worst = 0.0
    for _ in range(40):
        w = rng.random((1, 84, 87), np.float32)
        a, b = fused.step(feeds({"window": w}, sa)), pair.step(feeds({"window": w}, sb))
        assert set(a) == set(b)
        worst = max(worst, max(float(np.abs(a[k] - b[k]).max()) for k in a))
        sa, sb = next_state(a), next_state(b)
    assert worst <= 1e-5, worst


@pytest.mark.parametrize("variant", ["no_gcn", "no_stu", "no_khp"])
def test_pair_export_of_ablations(variant, tmp_path):
    """Without the GCN the back takes no keypoints, without audio no audio hand-over."""
    torch.manual_seed(4)
    p = Performer(ablate(preset("tiny"), variant)).eval()
    export_onnx(p, tmp_path, stages=False, cqt=False)
    tb, pair = TorchBackend(p), OrtBackend(tmp_path, pipeline=True)
    names = {t["name"] for t in json.loads((tmp_path / "manifest.json").read_text())["graphs"]["back"]["inputs"]}
    assert ("keypoints" in names) == p.cfg.stu.use_gcn
    assert (mid_name("audio") in names) == p.cfg.stu.use_audio
    st = tb.init_state(1)
    rng = np.random.default_rng(5)
    for _ in range(5):
        w = rng.random((1, 84, 87), np.float32)
        a, b = tb.step(feeds({"window": w}, st)), pair.step(feeds({"window": w}, st))
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4
        st = next_state(a)


def test_pipelined_render_equals_offline_performer(performer):
    x = music_signal(2.0, seed=21)
    ref_frames, ref_kp = offline_frames(performer, x)
    eng = Engine(TorchBackend(performer, pipeline=True), performer.cfg.audio, performer.cfg.video, RandomChunks(x, 3),
                 config=EngineConfig(realtime=False))
    assert eng.pipelined
    frames = []
    eng.sinks.append(CallbackSink(frames.append))
    stats = eng.run()
    assert [f.index for f in frames] == list(range(60))
    for f in frames:
        assert np.array_equal(f.frame, to_uint8_rgb(ref_frames[f.index]))
        assert np.array_equal(f.keypoints, ref_kp[f.index])
    assert stats["pipelined"] and stats["dropped"] == 0 and stats["errors"] == 0
    assert stats["stage_ms"]["front"] > 0 and stats["stage_ms"]["back"] > 0


def test_pipelined_onnxruntime_render_equals_unpipelined(performer, exported_pair):
    x = music_signal(1.5, seed=22)
    runs = []
    for backend in (OrtBackend(exported_pair), OrtBackend(exported_pair, pipeline=True)):
        frames = []
        eng = Engine(backend, performer.cfg.audio, performer.cfg.video, RandomChunks(x, 4),
                     [CallbackSink(frames.append)], EngineConfig(realtime=False))
        eng.run()
        runs.append(frames)
    a, b = runs
    assert [f.index for f in a] == [f.index for f in b] == list(range(45))
    for fa, fb in zip(a, b, strict=True):  # uint8 frames: at most one level of rounding apart
        assert int(np.abs(fa.frame.astype(int) - fb.frame.astype(int)).max()) <= 1
        assert np.allclose(fa.keypoints, fb.keypoints, atol=1e-5)


def test_pipelined_live_recording_stays_in_sync(performer, tmp_path):
    """Audio reaches the recorder from the loop thread and frames from the back thread."""
    out = tmp_path / "live.mp4"
    x = music_signal(2.0, seed=23)
    eng = Engine(TorchBackend(performer, pipeline=True), performer.cfg.audio, performer.cfg.video,
                 ArraySource(x, SR, realtime=True, block=256), [Mp4Recorder(out)], EngineConfig(realtime=True))
    stats = eng.run()
    assert stats["frames"] + stats["dropped"] == 60 and stats["frames"] >= 1  # how many: the machine's load
    with av.open(str(out)) as c:
        times = [f.time for f in c.decode(c.streams.video[0])]
    with av.open(str(out)) as c:
        n_audio = sum(f.samples for f in c.decode(c.streams.audio[0]))
    assert len(times) == stats["frames"]
    assert times == sorted(times) and times[-1] <= 2.0
    assert abs(n_audio / SR - 2.0) <= 1 / 30
    assert len(eng.stats.latency_ms) == stats["frames"] and min(eng.stats.latency_ms) > 0


class FlakyBack(TorchBackend):
    def back(self, front):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 10:
            raise RuntimeError("simulated failure")
        return super().back(front)


def test_failing_back_half_skips_one_frame(performer):
    x = music_signal(1.0, seed=24)
    frames = []
    eng = Engine(FlakyBack(performer, pipeline=True), performer.cfg.audio, performer.cfg.video, ArraySource(x, SR),
                 [CallbackSink(frames.append)], EngineConfig(realtime=False))
    stats = eng.run()
    assert stats["errors"] == 1
    assert len(frames) == 29 and 9 not in [f.index for f in frames]


class SlowBack(TorchBackend):
    """A back half slower than the frame rate (a fixed sleep); notes the engine's audio
    clock at each front."""

    engine = None

    def front(self, feeds):
        self.clocks = getattr(self, "clocks", [])
        self.clocks.append(self.engine.stats.audio_samples)
        return super().front(feeds)

    def back(self, front):
        time.sleep(0.05)
        return super().back(front)


def test_stop_drains_the_back_thread(performer):
    """A back half slower than the frame rate: drops are counted, nothing queues, and
    every frame handed over before stop() reaches the sinks."""
    from letsplay.models.features import CQT, frames_available

    x = music_signal(3.0, seed=25)
    frames = []
    backend = SlowBack(performer, pipeline=True)
    eng = Engine(backend, performer.cfg.audio, performer.cfg.video,
                 ArraySource(x, SR, realtime=True, block=512), [CallbackSink(frames.append)], EngineConfig())
    backend.engine = eng
    eng.start()
    deadline = time.monotonic() + 120  # liveness only: 10 frames take >= 0.5 s of backs
    while eng.stats.frames < 10 and eng.running and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.stop()
    assert not eng.running and eng.error is None
    # backs take >= 50 ms, frames come every 33: by the 10th frame out, >= 15 were due
    assert eng.stats.dropped >= 1
    assert len(frames) == eng.stats.frames == len(backend.clocks) >= 10  # every front reached the sinks
    idx = [f.index for f in frames]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    # nothing queues: each front was the newest frame its audio allowed when it began
    cqt = CQT(performer.cfg.audio)
    assert idx == [frames_available(n, cqt, performer.cfg.video) - 1 for n in backend.clocks]


def test_engine_refuses_a_pipeline_the_backend_cannot_run(performer, exported_pair):
    fused = OrtBackend(exported_pair)
    with pytest.raises(ValueError, match="front and back halves"):
        Engine(fused, performer.cfg.audio, performer.cfg.video, ArraySource(np.zeros(SR, np.float32), SR),
               config=EngineConfig(pipeline=True))
    with pytest.raises(BackendError, match="pipeline=True"):
        fused.front({})
    eng = Engine(OrtBackend(exported_pair, pipeline=True), performer.cfg.audio, performer.cfg.video,
                 ArraySource(np.zeros(SR, np.float32), SR), config=EngineConfig(pipeline=True))
    with pytest.raises(ValueError, match="front and back halves"):
        eng.set_backend(fused)


def test_export_without_the_pair(exported_pair, tmp_path):
    """An export from before the pair: a clear error for a user folder; the cache re-exports."""
    old = tmp_path / "old"
    shutil.copytree(exported_pair, old)
    m = json.loads((old / "manifest.json").read_text())
    for g in ("front", "back"):
        del m["graphs"][g]
        (old / f"{g}.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    OrtBackend(old)  # the fused graph still runs
    with pytest.raises(BackendError, match="re-export"):
        OrtBackend(old, pipeline=True)
    auto = open_backend(resolve_performer(str(old)),  # --pipeline auto
                        BackendOptions(backend="onnxruntime", compute="cpu", pipeline=None))
    assert not auto.pipeline  # falls back to the fused graph instead of failing


def test_cache_without_the_pair_is_re_exported(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LETSPLAY_CACHE", str(tmp_path))
    ref = resolve_performer(str(tiny_ckpt))
    cached = export_cache_folder(sha256_file(tiny_ckpt))
    assert cached.parent.parent == tmp_path
    export_onnx(Performer.load(tiny_ckpt), cached, checkpoint_sha256=sha256_file(tiny_ckpt), stages=False,
                cqt=False, pipeline=False)  # as an older letsplay cached it
    b = open_backend(ref, BackendOptions(backend="onnxruntime", compute="cpu", pipeline=True))
    assert b.pipeline and {"front", "back"} <= set(json.loads((cached / "manifest.json").read_text())["graphs"])


def test_auto_pipeline_policy():
    assert auto_pipeline("onnxruntime", "cpu") == (usable_cores() <= 2)
    assert not auto_pipeline("onnxruntime", "cuda")
    assert not auto_pipeline("onnxruntime", "cpu", "int8")
    assert not auto_pipeline("torch", "cpu") and not auto_pipeline("tensorrt")
