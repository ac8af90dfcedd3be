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
from xvfb import screenshot, start_xvfb, xvfb_available

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


def test_demo_window_on_a_real_display(display, tmp_path):
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
        demo.send_signal(signal.SIGINT)  # Ctrl-C closes the window cleanly
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
