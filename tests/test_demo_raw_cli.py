"""`letsplay demo` headless and `--raw`, through the real CLI in a subprocess: a headless
demo records every frame of its music; a bad --seconds is refused before any work; raw
frames stop as soon as their reader goes away, and never go to a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

SR = 44100
FPS = 30
FRAME_BYTES = 32 * 32 * 3  # the tiny preset's rgb24 frame


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No display (headless, as on a server) and a private cache for the demo music."""
    e = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    e["LETSPLAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "letsplay.ui.cli", *map(str, args)]


def read_mp4(path) -> tuple[list[Fraction], int]:
    """(frame times, decoded audio samples)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [Fraction(f.pts) * v.time_base for f in c.decode(v)]
    with av.open(str(path)) as c:
        n_audio = sum(f.samples for f in c.decode(c.streams.audio[0]))
    return times, n_audio


# --------------------------------------------------------------------------- headless demo


@pytest.mark.parametrize("how", ["no display", "--no-window --record"])
def test_headless_demo_records_every_frame(how, env, tiny_ckpt, tmp_path):
    """Headless and not played, the demo is rendered, not paced: its mp4 holds exactly
    fps x seconds frames, from frame 0 on, with audio of the same length -- whatever else
    the machine is doing."""
    seconds = 2.0
    stats = tmp_path / "stats.json"
    extra = [] if how == "no display" else ["--no-window", "--record", tmp_path / "mine.mp4"]
    r = subprocess.run(cli("demo", "--no-play", "--seconds", seconds, "--performer", tiny_ckpt, "--backend", "torch",
                           "--stats", stats, *extra), env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / ("demo.mp4" if how == "no display" else "mine.mp4")
    assert f"recorded the demo to {out}" in r.stderr and "rendering every frame" in r.stderr
    times, n_audio = read_mp4(out)
    n = round(seconds * FPS)
    assert times == [Fraction(i, FPS) for i in range(n)]  # every frame, frame 0 and 1 included
    assert abs(n_audio - seconds * SR) <= SR / FPS  # AAC pads to whole 1024-sample frames
    s = json.loads(stats.read_text())
    assert s["frames"] == n and s["dropped"] == 0 and s["errors"] == 0 and s["mode"] == "render"
    assert s["audio_seconds"] == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf"])
def test_demo_refuses_a_bad_length_before_any_work(seconds, env, tmp_path):
    r = subprocess.run(cli("demo", "--seconds", seconds, "--record", "d.mp4", "--no-play"), env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"letsplay demo: error: --seconds must be a positive number of seconds, got {float(seconds):g}"]
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing claimed


# --------------------------------------------------------------------------- --raw


def test_raw_stops_computing_when_the_reader_closes(tiny_ckpt, env, tmp_path):
    """`render --raw` into a reader that takes 100 bytes and closes: the engine stops
    after what the pipe could hold, says so in one line and exits 1."""
    wav = tmp_path / "ten.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(10 * SR) * 0.1).astype(np.float32), SR)
    proc = subprocess.Popen(cli("render", wav, "--raw", "--performer", tiny_ckpt, "--backend", "torch"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pipe_bytes = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
    head = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 1, err[-3000:]
    assert len(head) == 100
    assert "raw video to stdout: rgb24 32x32 at 30 fps (ffmpeg -f rawvideo -pix_fmt rgb24 -s 32x32 -r 30" in err
    last = re.fullmatch(r"letsplay render: the consumer closed the output after (\d+) frames; stopped "
                        r"\((\d+) frames computed\)", err.strip().splitlines()[-1])
    assert last, err[-3000:]
    written, computed = map(int, last.groups())
    # frames written before the reader left fit in the pipe, plus the one blocked writing and
    # one more in flight; of the 300 frames of the file, the rest were never computed
    assert 1 <= written <= computed <= pipe_bytes // FRAME_BYTES + 3 < 10 * FPS
    assert "Traceback" not in err


def test_demo_raw_into_head(tiny_ckpt, env, tmp_path):
    """The shell way: `letsplay demo --raw | head -c 100` fails (pipefail) instead of
    rendering the whole piece for nobody."""
    stats = tmp_path / "stats.json"
    cmd = " ".join(cli("demo", "--raw", "--no-play", "--seconds", 10, "--performer", tiny_ckpt, "--backend", "torch",
                       "--stats", stats))
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 100 > {tmp_path / 'head.bin'}"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert (tmp_path / "head.bin").stat().st_size == 100
    assert "rgb24 32x32 at 30 fps" in r.stderr
    assert "letsplay demo: the consumer closed the output after " in r.stderr
    assert not (tmp_path / "demo.mp4").exists()  # --raw records only when asked to
    s = json.loads(stats.read_text())
    # head reads what it wants and exits: at most a pipe's worth (and head's own read) was
    # written before, one more frame blocked writing, one in flight
    assert 1 <= s["frames"] <= (2 * 65536) // FRAME_BYTES + 3 < 10 * FPS


@pytest.mark.parametrize("command", ["render", "demo"])
def test_raw_refuses_a_terminal(command, env, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    main, tty = os.openpty()
    try:
        args = [wav] if command == "render" else ["--no-play"]
        r = subprocess.run(cli(command, *args, "--raw"), env=env, cwd=tmp_path, stdout=tty, stderr=subprocess.PIPE,
                           text=True, timeout=300)
    finally:
        os.close(tty)
        os.close(main)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"letsplay {command}: error: --raw writes binary video frames to stdout, which is a terminal here: pipe it "
        f"(e.g. | ffmpeg -f rawvideo ...) or redirect it to a file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_raw_help_names_no_fixed_size():
    for command in ("render", "demo"):
        r = subprocess.run(cli(command, "--help"), capture_output=True, text=True, timeout=300)
        text = " ".join(r.stdout.split())
        assert r.returncode == 0 and "256x256" not in text
        assert "the performer's video size and frame rate, printed to stderr at the start" in text
