"""The real window on a real X display: `letsplay demo` under Xvfb with the shipped
performer, a screenshot read back from the X server, and a clean exit on Ctrl-C.

(The offscreen tests in test_window.py check the window's behaviour; this one checks that
the program really opens a window on a display and draws the performer into it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from xvfb import SIZE, screenshot, start_xvfb, xvfb_available

pytestmark = pytest.mark.skipif(not xvfb_available(), reason="Xvfb is not installed (apt-get install xvfb)")


@pytest.fixture(scope="module")
def display():
    proc, disp = start_xvfb()
    yield disp
    proc.terminate()
    proc.wait(5)


def busy_fraction(shot: np.ndarray) -> float:
    """Share of pixels that are neither near-black nor flat grey: the performer's colours."""
    rgb = shot.astype(np.int16)
    sat = rgb.max(-1) - rgb.min(-1)
    return float(((sat > 25) & (rgb.max(-1) > 40)).mean())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_window_on_a_real_display(display, tmp_path, sig):
    """The demo's window shows the performer on a real X server; Ctrl-C in the terminal, or
    SIGTERM (kill, systemd stopping an installation), closes it cleanly with exit 0."""
    env = dict(os.environ, DISPLAY=display, LETSPLAY_CACHE=str(tmp_path / "cache"))
    env.pop("QT_QPA_PLATFORM", None)  # the real xcb platform, not offscreen
    blank = screenshot(display)
    assert blank.max() == 0  # nothing on the screen before the program starts
    demo = subprocess.Popen([sys.executable, "-m", "letsplay.ui.cli", "demo", "--no-play", "--backend", "torch",
                             "--seconds", "60"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        shot, t0 = None, time.monotonic()
        while time.monotonic() - t0 < 90:
            assert demo.poll() is None, f"letsplay demo exited early: {demo.stderr.read()[-3000:]}"
            time.sleep(1.0)
            s = screenshot(display)
            if busy_fraction(s) > 0.02:  # frames of the performer are on the screen
                time.sleep(2.0)  # a few more frames and a statistics update
                shot = screenshot(display)
                break
        assert shot is not None, "no performer frames appeared on the display within 90 s"
        demo.send_signal(sig)  # closes the window cleanly
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err[-3000:]
    # not blank: a window with the performer in many colours, not one flat colour
    assert shot.std() > 20 and busy_fraction(shot) > 0.02
    colours = np.unique(shot.reshape(-1, 3)[:: 7], axis=0)
    assert len(colours) > 500
    # the window really changed what the X server shows
    assert np.abs(shot.astype(int) - blank).mean() > 10
    out = os.environ.get("LETSPLAY_SCREENSHOT")  # `LETSPLAY_SCREENSHOT=docs/img/window.png pytest ...`
    if out:
        import cv2

        ys, xs = np.nonzero(shot.max(-1) > 0)
        crop = shot[: ys.max() + 1, : xs.max() + 1]  # the window, without the empty screen around it
        cv2.imwrite(out, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))


KIOSK_SCRIPT = """
import sys, numpy as np, torch
from PyQt6.QtWidgets import QApplication
from letsplay.models.performer import Performer
from letsplay.models.presets import preset
from letsplay.realtime.backends import TorchBackend
from letsplay.realtime.engine import Engine
from letsplay.realtime.sources import ArraySource
from letsplay.ui.window import LetsplayWindow

torch.set_num_threads(1)
app = QApplication([])
p = Performer(preset("tiny")).eval()
sr = p.cfg.audio.sample_rate
src = ArraySource(np.zeros(sr * 30, np.float32), sr, realtime=True, block=735)
win = LetsplayWindow(Engine(TorchBackend(p), p.cfg.audio, p.cfg.video, src), kiosk=sys.argv[1] == "kiosk")
if sys.argv[1] == "f11":
    win.show()
    win.set_fullscreen(True)
for _ in range(40):  # let the X server map and configure the window
    app.processEvents()
    import time; time.sleep(0.05)
g, s = win.frameGeometry(), win.screen().geometry()
print("window", g.x(), g.y(), g.width(), g.height(), "screen", s.x(), s.y(), s.width(), s.height(),
      win.isFullScreen(), flush=True)
win.set_fullscreen(False) if sys.argv[1] == "f11" else win.set_kiosk(False)
for _ in range(20):
    app.processEvents()
    time.sleep(0.05)
g = win.frameGeometry()
print("after", g.x(), g.y(), g.width(), g.height(), flush=True)
win.close()
"""


@pytest.mark.parametrize("mode", ["kiosk", "f11"])
def test_kiosk_and_full_screen_cover_a_bare_x_server(display, tmp_path, mode):
    """An installation's X server often runs no window manager, which is what carries out
    showFullScreen: the kiosk window (and F11) must cover the screen by itself, and give
    the screen back when left."""
    env = dict(os.environ, DISPLAY=display, LETSPLAY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("QT_QPA_PLATFORM", None)  # the real xcb platform on Xvfb, no window manager running
    r = subprocess.run([sys.executable, "-c", KIOSK_SCRIPT, mode], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict((line.split()[0], line.split()[1:]) for line in r.stdout.splitlines() if line.strip())
    w = [int(v) for v in got["window"][:4]]
    s = [int(v) for v in got["window"][5:9]]
    assert s[2:] == list(SIZE) and w == s  # the whole screen, from its corner
    assert got["window"][9] == "True"  # and in the full-screen state (Esc, F11 toggle)
    after = [int(v) for v in got["after"]]
    assert after[2:] != list(SIZE)  # left: back to a window smaller than the screen
