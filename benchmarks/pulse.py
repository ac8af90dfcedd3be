"""A real PulseAudio server with a null sink, for tests that need a capture device.

Audio played into the null sink (``paplay``) comes out of its ``.monitor`` source,
which PortAudio sees through ALSA's ``pulse`` device: a real device path end to end.
The server gets its own runtime folder and socket; clients find it by PULSE_SERVER.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SINK = "letsplay_test"


def start_pulse(folder: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start a private PulseAudio; returns (process, env for its clients)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "default.pa"
    sock = folder / "native"
    script.write_text(
        f"load-module module-native-protocol-unix socket={sock} auth-anonymous=1\n"
        f"load-module module-null-sink sink_name={SINK} rate=44100 channels=2\n"
        f"set-default-sink {SINK}\n"
        f"set-default-source {SINK}.monitor\n"
    )
    env = dict(os.environ, XDG_RUNTIME_DIR=str(folder), PULSE_SERVER=f"unix:{sock}",
               PULSE_RUNTIME_PATH=str(folder), HOME=str(folder))
    proc = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "-F", str(script),
                             "--log-target=stderr", "--log-level=error"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pulseaudio exited: {proc.stderr.read().decode()[-500:]}")
        if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
            return proc, {"PULSE_SERVER": env["PULSE_SERVER"], "XDG_RUNTIME_DIR": str(folder)}
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pulseaudio did not come up within 10 s")


def pulse_available() -> bool:
    return bool(shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay"))
