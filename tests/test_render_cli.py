"""`letsplay render`: a 60 s file becomes an mp4 whose audio and video both last 60 s;
keypoints reach an OSC receiver on loopback, one message per frame, with the frame time."""

import subprocess
import sys
import threading

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import music_signal

SR = 44100


def render(*args):
    r = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "render", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_render_60s_durations_match(tmp_path, tiny_ckpt):
    wav = tmp_path / "a.wav"
    sf.write(wav, music_signal(60.0, seed=31), SR, subtype="FLOAT")
    out, kp = tmp_path / "a.mp4", tmp_path / "kp.npz"
    r = render(wav, "-o", out, "--keypoints", kp, "--performer", tiny_ckpt, "--backend", "torch")
    assert "backend torch on cpu" in r.stderr
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        times = [f.time for f in c.decode(v)]
    with av.open(str(out)) as c:
        n_audio = sum(f.samples for f in c.decode(c.streams.audio[0]))
    fps = 30
    video_dur = times[-1] + 1 / fps
    audio_dur = n_audio / SR
    assert len(times) == 60 * fps
    assert abs(video_dur - 60.0) <= 1e-3
    assert abs(audio_dur - 60.0) <= 1 / fps
    assert np.allclose(np.diff(times), 1 / fps, atol=1e-4)
    z = np.load(kp)
    assert z["keypoints"].shape == (len(times), 67, 2)
    assert np.allclose(z["time"], z["index"] / fps)


def test_render_sends_osc_per_frame(tmp_path, tiny_ckpt):
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    got = []
    d = Dispatcher()
    d.map("/letsplay/frame", lambda addr, *args: got.append(args))
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), d)
    port = server.server_address[1]
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        wav = tmp_path / "b.wav"
        sf.write(wav, music_signal(3.0, seed=32), SR, subtype="FLOAT")
        render(wav, "--osc", f"127.0.0.1:{port}", "--performer", tiny_ckpt, "--backend", "torch")
        import time

        deadline = time.monotonic() + 5
        while len(got) < 90 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.shutdown()
    assert len(got) == 90  # frames 0..89 of 3 s
    idx = sorted(int(m[1]) for m in got)
    assert idx == list(range(90))
    for m in got:
        assert len(m) == 3 + 134
        assert m[2] == pytest.approx(m[1] / 30, abs=1e-4)
        assert all(-0.5 <= v <= 1.5 for v in m[3:])
