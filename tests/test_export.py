"""ONNX export: parity with torch over stepped frames (fused and per stage), the CQT
step graph, manifests, and clear errors for damaged or mismatched exports."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import music_signal

from letsplay.export.onnx import ManifestError, export_onnx, parity, read_manifest, sha256_file
from letsplay.models.features import CQT, frame_windows, frames_available
from letsplay.models.performer import Performer
from letsplay.models.presets import preset
from letsplay.models.stepping import STATE_IN, feeds, next_state, state_in_name, state_out_name
from letsplay.realtime.backends import BackendError, OrtBackend, TorchBackend

N_FRAMES = 100


@pytest.fixture(scope="module")
def exported(performer, tiny_export):
    out, ckpt = tiny_export
    return performer, out, ckpt


@pytest.fixture(scope="module")
def windows(exported):
    p = exported[0]
    x = music_signal(N_FRAMES / 30 + 0.1, seed=11)
    cqt = CQT(p.cfg.audio)
    with torch.inference_mode():
        cols = cqt(torch.from_numpy(x))
    n = frames_available(len(x), cqt, p.cfg.video)
    return frame_windows(cols, p.cfg.audio, p.cfg.video, min(n, N_FRAMES)).numpy()  # [N, 84, 87]


def test_fused_step_parity_100_frames(exported, windows):
    """100 frames, the state fed back. Both backends are fed the torch trajectory's state
    each frame, and every output -- the frame and each next state -- is compared: a
    randomly initialised CVG's frame feedback amplifies rounding differences ~1.4x per
    frame (its loop gain is > 1 before training), so two free-running float32
    implementations of it drift apart whatever their fidelity (see the next test)."""
    p, out, _ = exported
    assert OrtBackend(out).device == "CPUExecutionProvider"
    worst = parity(p, out, windows)
    assert len(windows) == N_FRAMES
    assert set(worst) >= {"frame", "keypoints", "coarse", "heatmap", state_out_name("stu.gru_h")}
    assert all(v <= 1e-4 for v in worst.values()), worst


def test_free_running_parity_without_frame_feedback(tmp_path, windows):
    """Each backend carries its own state for 100 frames (LSTMs, ConvGRU), on the
    Table I (a) variant without the CVG frame-feedback loop."""
    from letsplay.models.presets import ablate

    torch.manual_seed(0)
    p = Performer(ablate(preset("tiny"), "no_cvg")).eval()
    export_onnx(p, tmp_path, stages=False, cqt=False, pipeline=False)
    tb, ob = TorchBackend(p), OrtBackend(tmp_path)
    st_t, st_o = tb.init_state(1), ob.init_state(1)
    worst = 0.0
    for w in windows:
        a = tb.step(feeds({"window": w[None]}, st_t))
        b = ob.step(feeds({"window": w[None]}, st_o))
        st_t, st_o = next_state(a, st_t), next_state(b, st_o)
        worst = max(worst, float(np.abs(a["frame"] - b["frame"]).max()))
    assert worst <= 1e-4


def test_each_stage_parity(exported, windows):
    p, out, _ = exported
    sess = {n: ort.InferenceSession(str(out / f"{n}.onnx"), providers=["CPUExecutionProvider"])
            for n in ("khp", "cvg", "stu")}
    tstate = p.init_state(1)
    worst = 0.0
    z = np.zeros((1, p.cfg.cvg.z_dim), np.float32)
    for w in windows[:N_FRAMES]:
        # the stages chained through onnxruntime, from the torch trajectory's state
        state = {n: {k: v.numpy() for k, v in getattr(tstate, n).to_dict(f"{n}.").items()} for n in sess}
        with torch.inference_mode():
            ref, tstate = p.step(torch.from_numpy(w[None]), tstate)
        ok = dict(zip([o.name for o in sess["khp"].get_outputs()], sess["khp"].run(
            None, feeds({"window": w[None]}, state["khp"])), strict=True))
        oc = dict(zip([o.name for o in sess["cvg"].get_outputs()], sess["cvg"].run(
            None, feeds({"window": w[None], "z": z}, state["cvg"])), strict=True))
        os_ = dict(zip([o.name for o in sess["stu"].get_outputs()], sess["stu"].run(
            None, feeds({"coarse": oc["coarse"], "heatmap": ok["heatmap"], "keypoints": ok["keypoints"],
                         "window": w[None]}, state["stu"])), strict=True))
        new = {k: v.numpy() for k, v in tstate.to_dict().items()}
        for n, o in (("khp", ok), ("cvg", oc), ("stu", os_)):
            for k, v in next_state(o, state[n]).items():
                worst = max(worst, float(np.abs(v - new[k]).max()))
        worst = max(worst, float(np.abs(ok["keypoints"] - ref.keypoints.numpy()).max()),
                    float(np.abs(ok["heatmap"] - ref.heatmap.numpy()).max()),
                    float(np.abs(oc["coarse"] - ref.coarse.numpy()).max()),
                    float(np.abs(os_["frame"] - ref.frame.numpy()).max()))
    assert worst <= 1e-4


def test_cqt_step_graph_equals_streaming_cqt(exported):
    p, out, _ = exported
    s = ort.InferenceSession(str(out / "cqt_step.onnx"), providers=["CPUExecutionProvider"])
    hop = p.cfg.audio.hop
    x = music_signal(1.0, seed=12)
    n = len(x) // hop
    tail = np.zeros((1, s.get_inputs()[1].shape[1]), np.float32)
    cols = [np.zeros((p.cfg.audio.n_bins,), np.float32)]  # column 0 is silence
    for k in range(n):
        col, tail = s.run(None, {"audio": x[None, k * hop:(k + 1) * hop], state_in_name("cqt.tail"): tail})
        cols.append(col[0, :, 0])
    got = np.stack(cols, axis=1)
    with torch.inference_mode():
        ref = CQT(p.cfg.audio)(torch.from_numpy(x[: n * hop])).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_manifest_contents(exported):
    p, out, ckpt = exported
    m = read_manifest(out, checkpoint_sha256=sha256_file(ckpt))
    assert m.audio == p.cfg.audio and m.video == p.cfg.video
    d = m.data
    assert d["preset"] == "tiny" and d["opset"] >= 17
    assert set(d["graphs"]) == {"performer", "khp", "cvg", "stu", "front", "back", "cqt_step"}
    for g in d["graphs"].values():
        for t in g["inputs"] + g["outputs"]:
            assert t["shape"][0] == "B"  # the batch stayed dynamic
    names = [t["name"] for t in d["graphs"]["performer"]["inputs"]]
    assert names[0] == "window" and all(n.startswith(STATE_IN) for n in names[1:])
    assert {"torch", "onnx"} <= set(d["versions"])


def test_batched_streams(exported, windows):
    p, out, _ = exported
    ob = OrtBackend(out)
    st = ob.init_state(3)
    w = np.stack([windows[5], windows[6], windows[5]])
    r = ob.step(feeds({"window": w}, st))
    assert r["frame"].shape == (3, 3, 32, 32)
    # each stream its own: rows 0 and 2 (the same window) agree in every output, frame and
    # next state; row 1 (another window) does not (its audio encoders' states differ most
    # clearly: a randomly initialised generator's frame barely depends on the audio)
    for k, v in r.items():
        assert np.allclose(v[0], v[2], atol=1e-6), k
    assert max(float(np.abs(v[0] - v[1]).max()) for v in r.values()) > 1e-3


def test_corrupted_graph_is_refused(exported, tmp_path):
    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    g = bad / "performer.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="SHA-256"):
        OrtBackend(bad)


def test_manifest_from_another_checkpoint(exported, tmp_path):
    _, out, _ = exported
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    Performer(preset("tiny")).save(other)
    with pytest.raises(ManifestError, match="another|not from"):
        read_manifest(out, checkpoint_sha256=sha256_file(other))


def test_mismatched_or_damaged_manifest(exported, tmp_path):
    _, out, _ = exported
    bad = tmp_path / "m"
    shutil.copytree(out, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["state"][0]["shape"] = ["B", 999]
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BackendError, match="manifest"):
        OrtBackend(bad)
    (bad / "manifest.json").write_text("{ truncated")
    with pytest.raises(ManifestError, match="not valid JSON"):
        OrtBackend(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        OrtBackend(bad)


def test_unavailable_provider_is_an_error_not_a_silent_fallback(exported):
    _, out, _ = exported
    with pytest.raises(BackendError, match="not available"):
        OrtBackend(out, provider="cuda")
    b = OrtBackend(out, provider="cuda", allow_fallback=True)
    assert b.device == "CPUExecutionProvider"
