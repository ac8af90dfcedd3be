"""What a user sees on stderr: one clear line for a problem, never a traceback, and no
chatter from third-party libraries (torch.onnx's notes on torchvision, MediaPipe's
protobuf / TensorFlow Lite / absl start-up lines). Every test runs the real CLI (or the
real library) in a subprocess and reads its stderr."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import music_signal

SR = 44100
CHATTER = ("torchvision", "MessageFactory", "absl", "TfLite", "TensorFlow Lite", "Traceback")


def cli(*args: str, tmp_path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, LETSPLAY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "letsplay.ui.cli", *args], env=e, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def chatter(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(w.lower() in line.lower() for w in CHATTER)]


def test_tensorrt_missing_is_one_line_before_any_export(tmp_path, tiny_ckpt):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("TensorRT runs here: nothing is missing")
    except ImportError:
        pass
    wav = tmp_path / "x.wav"
    sf.write(wav, music_signal(1.0), SR)
    for args in (("render", str(wav), "-o", str(tmp_path / "x.mp4"), "--backend", "tensorrt"),
                 ("live", "--backend", "tensorrt", "--no-window")):
        r = cli(*args, tmp_path=tmp_path)
        assert r.returncode != 0
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "TensorRT" in errors[0] and "[trt]" in errors[0] and "--backend onnxruntime" in errors[0]
        assert "exporting" not in r.stderr  # told before the minutes of ONNX export, not after
        assert not (tmp_path / "cache" / "onnx").exists()
        assert not (tmp_path / "x.mp4").exists()
    r = cli("export", "trt", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "exp"), "--no-stages",
            tmp_path=tmp_path)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT" in errors[0] and "[trt]" in errors[0]
    assert not (tmp_path / "exp" / "performer.onnx").exists()  # refused before any export


def test_damaged_audio_is_one_clear_line_without_a_traceback(tmp_path, tiny_ckpt):
    x = music_signal(20.0, seed=4)
    sf.write(tmp_path / "good.flac", x, SR)
    data = bytearray((tmp_path / "good.flac").read_bytes())
    mid = len(data) // 2
    data[mid: mid + 3000] = bytes((b * 7 + 3) % 256 for b in data[mid: mid + 3000])  # garbage inside the stream
    (tmp_path / "bad.flac").write_bytes(bytes(data))
    r = cli("render", str(tmp_path / "bad.flac"), "--keypoints", str(tmp_path / "k.npz"), "--performer",
            str(tiny_ckpt), "--backend", "torch", tmp_path=tmp_path)
    assert r.returncode != 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    assert r.stderr.count("the file is damaged") == 1 and "letsplay render: " in r.stderr
    # -vv (debug) still shows where it came from
    r = cli("-vv", "render", str(tmp_path / "bad.flac"), "--keypoints", str(tmp_path / "k2.npz"), "--performer",
            str(tiny_ckpt), "--backend", "torch", tmp_path=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_first_onnx_export_and_render_are_free_of_torch_chatter(tmp_path, tiny_ckpt):
    pytest.importorskip("onnxruntime")
    r = cli("export", "onnx", "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "exp"), "--no-stages",
            tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not chatter(r.stderr), chatter(r.stderr)
    wav = tmp_path / "x.wav"
    sf.write(wav, music_signal(1.0), SR)
    r = cli("render", str(wav), "--keypoints", str(tmp_path / "k.npz"), "--performer", str(tiny_ckpt),
            "--backend", "onnxruntime", tmp_path=tmp_path)  # a checkpoint: exported into the cache first
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exporting" in r.stderr and not chatter(r.stderr), chatter(r.stderr)


def test_exporter_warnings_of_our_own_still_show(caplog):
    """The export's quieting is scoped to torch.onnx's registry logger and restored."""
    import logging

    from letsplay.export.onnx import quiet_exporter

    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = reg.level
    with quiet_exporter():
        assert reg.level == logging.ERROR
        logging.getLogger("letsplay.test").warning("ours")
    assert reg.level == before and "ours" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe ([pose] extra) not installed")
def test_mediapipe_starts_without_protobuf_or_tflite_lines():
    # (not imported here: its import prints the protobuf line into this process's excepthook)
    code = ("import numpy as np, sys, logging\n"
            "logging.basicConfig()\n"
            "from letsplay.models.data.prepare import MediaPipePose\n"
            "m = MediaPipePose(static=False)\n"
            "for _ in range(3): kp, conf = m(np.zeros((96, 96, 3), np.uint8))\n"
            "m.close()\n"
            "logging.getLogger('letsplay.test').warning('after mediapipe')\n"
            "print('frames', kp.shape, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not chatter(r.stderr), r.stderr
    assert "after mediapipe" in r.stderr and "frames (67, 2)" in r.stderr  # our stderr is back afterwards


def test_live_without_an_input_device_says_what_to_do(tmp_path, tiny_ckpt):
    """No sound server, no card: PortAudio's "Error querying device -1" becomes advice."""
    r = cli("live", "--no-window", "--performer", str(tiny_ckpt), "--backend", "torch", "--seconds", "1",
            tmp_path=tmp_path, PULSE_SERVER="unix:/nonexistent/pulse")
    if r.returncode == 0:
        pytest.skip("this machine has a capture device")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "device -1" not in r.stderr
    line = next(x for x in r.stderr.splitlines() if "error:" in x)
    assert "letsplay devices" in line and "--device" in line and "PULSE_SOURCE" in line


def test_devices_json_lists_portaudio_devices_and_pulse_sources(tmp_path):
    r = cli("devices", "--json", tmp_path=tmp_path, PULSE_SERVER="unix:/nonexistent/pulse")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"portaudio", "pulse_sources"} and d["pulse_sources"] == []  # no server answers
    h = cli("devices", "--help", tmp_path=tmp_path)
    assert "pulse_sources" in h.stdout and "PULSE_SOURCE" in h.stdout


@pytest.mark.slow
def test_bench_measures_live_and_ends_with_a_verdict(tmp_path):
    pytest.importorskip("onnxruntime")
    r = cli("bench", "--presets", "tiny", "--frames", "2", "--json", str(tmp_path / "b.json"), tmp_path=tmp_path,
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "issue" not in r.stdout.lower() and not chatter(r.stderr), r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("live at 30 fps: ") and last.split(": ")[1].split(" ")[0] in ("yes", "borderline", "no")
    live = json.loads((tmp_path / "b.json").read_text())["live_check"]
    assert live["performer"] == "cello" and live["frames"] > 0 and live["verdict"] == last
    from letsplay.realtime.backends import auto_pipeline, usable_cores

    # the mode live runs: pipelined halves where --pipeline auto turns them on
    assert ("pipelined" in live["backend"]) == (live["backend"].startswith("onnxruntime on CPU")
                                                and auto_pipeline("onnxruntime", "cpu") and usable_cores() <= 2)
    expected = "yes" if live["ms_per_frame"] <= 0.8 * live["budget_ms"] else (
        "borderline" if live["ms_per_frame"] <= live["budget_ms"] else "no")
    assert last.split(": ")[1].startswith(expected)
    np.testing.assert_allclose(live["ms_per_frame"], 1000 / live["fps"], rtol=0.01)
