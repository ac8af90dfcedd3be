"""A real X display for window tests: Xvfb, and screenshots of its root window.

Screenshots come from the X server itself (FFmpeg's ``x11grab`` device through PyAV),
so they show what is really on the display, not what the program thinks it drew.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np

SIZE = (1280, 800)


def xvfb_available() -> bool:
    return shutil.which("Xvfb") is not None


def start_xvfb(size: tuple[int, int] = SIZE) -> tuple[subprocess.Popen, str]:
    """Start Xvfb on a free display number; returns (process, ":N")."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{size[0]}x{size[1]}x24",
                             "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    os.close(w)
    deadline = time.monotonic() + 15
    buf = b""
    with os.fdopen(r, "rb", buffering=0) as f:
        while time.monotonic() < deadline and not buf.endswith(b"\n"):
            if proc.poll() is not None:
                raise RuntimeError(f"Xvfb exited: {proc.stderr.read().decode()[-500:]}")
            chunk = f.read(16)
            if not chunk:
                break
            buf += chunk
    if not buf.strip():
        proc.kill()
        raise RuntimeError("Xvfb did not report a display number within 15 s")
    return proc, f":{buf.decode().strip()}"


def screenshot(display: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The whole screen as RGB uint8 [H, W, 3], read from the X server."""
    import av

    with av.open(f"{display}.0", format="x11grab",
                 options={"video_size": f"{size[0]}x{size[1]}", "framerate": "5", "draw_mouse": "0"}) as c:
        for frame in c.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise RuntimeError(f"x11grab read no frame from {display}")
