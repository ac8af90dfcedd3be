"""`letsplay live` on a REAL capture device: a private PulseAudio with a null sink.

A known file is played into the sink while `letsplay live --device pulse --record`
captures the sink's monitor; the recording's audio must correlate with the file and
every frame of the captured audio must be accounted for (rendered and recorded, or
dropped when the machine is busy).
"""

import json
import os
import re
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import music_signal

from benchmarks.pulse import pulse_available, start_pulse

pytestmark = pytest.mark.skipif(not pulse_available(), reason="PulseAudio (pulseaudio, pactl, paplay) not installed")

SR = 44100


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    proc, env = start_pulse(tmp_path_factory.mktemp("pulse"))
    yield env
    proc.terminate()
    proc.wait(5)


def read_mp4(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.time for f in c.decode(v)]
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        chunks = [f.to_ndarray() for f in c.decode(a)]
        rate = a.rate
    audio = np.concatenate([x.mean(axis=0) if x.ndim == 2 else x for x in chunks], axis=-1)
    return frames, audio.astype(np.float32), rate


def test_live_records_what_the_device_captured(pulse, tiny_ckpt, tmp_path):
    env = dict(os.environ, **pulse)
    played = music_signal(4.0, seed=21) * 0.7
    wav = tmp_path / "played.wav"
    sf.write(wav, played, SR, subtype="FLOAT")
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(SR * 12, np.float32), SR)
    out, stats = tmp_path / "live.mp4", tmp_path / "stats.json"
    # Keep the sink running (a null sink's monitor only flows while something plays).
    bed = subprocess.Popen(["paplay", str(silence)], env=env)
    try:
        live = subprocess.Popen(
            [sys.executable, "-m", "letsplay.ui.cli", "live", "--device", "pulse", "--record", str(out),
             "--seconds", "7", "--performer", str(tiny_ckpt), "--backend", "torch", "--no-window",
             "--stats", str(stats)], env=env, stderr=subprocess.PIPE, text=True)
        # wait until input is flowing (the status line counts rendered frames) before playing
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(iter(lambda: live.stderr.read(1), "")), daemon=True)
        reader.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and not any(int(n) > 0 for n in re.findall(r"(\d+) frames", "".join(err))):
            assert live.poll() is None, f"letsplay live exited early: {''.join(err)[-2000:]}"
            time.sleep(0.05)
        assert any(int(n) > 0 for n in re.findall(r"(\d+) frames", "".join(err))), "letsplay live never rendered input"
        subprocess.run(["paplay", str(wav)], env=env, check=True, timeout=30)
        live.wait(timeout=60)
        reader.join(5)
        assert live.returncode == 0, "".join(err)[-2000:]
    finally:
        bed.kill()
    frames, audio, rate = read_mp4(out)
    assert rate == SR
    # the played file is in the recording: find it and correlate
    c = np.correlate(audio, played[: SR // 2], mode="valid")
    k = int(np.argmax(np.abs(c)))
    seg = audio[k: k + len(played)]
    assert len(seg) == len(played), "the recording does not hold the whole played file"
    r = np.corrcoef(seg, played)[0, 1]
    assert r > 0.9, f"correlation {r:.3f}"
    # every frame of the 7 s is accounted for (rendered or, on a busy machine, dropped), and the
    # recording holds each rendered frame; how many keep up is a benchmark (benchmarks/latency.py)
    s = json.loads(stats.read_text())
    assert s["audio_seconds"] == pytest.approx(7.0, abs=0.05) and s["errors"] == 0
    assert s["frames"] + s["dropped"] == 7 * 30 and s["frames"] >= 1
    assert len(frames) == s["frames"]


def test_demo_plays_to_the_speakers_and_records_what_was_played(pulse, tiny_ckpt, tmp_path):
    """`letsplay demo` with an output device plays the music (captured here from the null
    sink's monitor with parecord) and renders and records exactly the samples it played."""
    from letsplay.realtime.demo import demo_audio

    env = dict(os.environ, **pulse, LETSPLAY_CACHE=str(tmp_path / "cache"))
    heard = tmp_path / "heard.wav"
    cap = subprocess.Popen(["parecord", "--device", "letsplay_test.monitor", "--rate", str(SR), "--channels", "1",
                            "--format", "float32le", "--file-format=wav", str(heard)], env=env)
    try:
        time.sleep(1.0)  # the capture is open before the music starts
        out, stats = tmp_path / "demo.mp4", tmp_path / "stats.json"
        demo = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "demo", "--no-window", "--seconds", "4",
                               "--performer", str(tiny_ckpt), "--backend", "torch", "--record", str(out),
                               "--stats", str(stats)], env=env, capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "playing to the speakers" in demo.stderr
        time.sleep(0.5)
    finally:
        cap.terminate()
        cap.wait(10)
    # what the speakers got is the demo music
    played, rate = sf.read(heard, dtype="float32")
    assert rate == SR
    music = demo_audio("cello", SR, 4.0)
    from scipy.signal import correlate

    c = correlate(played, music, mode="valid", method="fft")
    k = int(np.argmax(np.abs(c)))  # where the music starts in the capture
    assert 0 <= k and k + len(music) <= len(played), "the capture does not hold the whole demo"
    assert np.corrcoef(played[k: k + len(music)], music)[0, 1] > 0.95
    # and the recording holds the same samples, with frames for all of it
    frames, audio, rate = read_mp4(out)
    assert rate == SR and abs(len(audio) - len(music)) <= SR // 30
    # AAC's encoder delay can leave the decoded track a few samples late (44 seen), and the
    # file starts at the first frame rendered (when the model's first frame came late, the
    # engine skipped frame 0 and the file starts one frame, 1470 samples, into the music):
    # align within one video frame either way, then the samples must be the music's
    F = SR // 30
    c = correlate(audio[: SR + 2 * F], music[F: SR - F], mode="valid", method="fft")
    lag = int(np.argmax(np.abs(c))) - F  # audio[t + lag] == music[t]
    assert abs(lag) <= F, f"the recorded audio is {lag} samples off the music"
    a, m = (audio[lag:], music) if lag >= 0 else (audio, music[-lag:])
    n = min(len(a), len(m))
    assert n > len(music) - 2 * F
    assert np.corrcoef(a[:n], m[:n])[0, 1] > 0.95
    assert frames[-1] > 3.9  # video to the end of the music
    s = json.loads(stats.read_text())
    # every frame of the music accounted for: rendered (and recorded), or dropped on a busy machine
    assert s["frames"] + s["dropped"] == 4 * 30 and len(frames) == s["frames"] >= 1


def test_devices_lists_the_pulse_sources_by_name(pulse):
    """With a sound server running, `letsplay devices` names its capture sources (what
    PULSE_SOURCE takes), the null sink's monitor among them."""
    env = dict(os.environ, **pulse)
    r = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "devices"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "PULSE_SOURCE" in r.stdout and "letsplay_test.monitor" in r.stdout
    r = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "devices", "--json"], env=env, capture_output=True,
                       text=True, timeout=60)
    d = json.loads(r.stdout)
    assert any(s["name"] == "letsplay_test.monitor" and s["monitor"] for s in d["pulse_sources"])
    assert any(x["name"] == "pulse" and x["inputs"] > 0 for x in d["portaudio"])
