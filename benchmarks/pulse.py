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


def pulse_for_this_process(what: str, folder: str | None, prefix: str) -> tuple[Path, subprocess.Popen]:
    """A private PulseAudio for a benchmark that captures from it in this process: its
    working folder (``folder``, or a new temporary one) and the server, whose address is
    put in ``os.environ`` (before sounddevice is imported, so PortAudio finds it)."""
    import tempfile

    if not pulse_available():
        raise RuntimeError(f"{what} needs pulseaudio, pactl and paplay (Debian: pulseaudio pulseaudio-utils)")
    tmp = Path(folder or tempfile.mkdtemp(prefix=prefix))
    tmp.mkdir(parents=True, exist_ok=True)
    proc, env = start_pulse(tmp / "pulse")
    os.environ.update(env)
    return tmp, proc


def stop_pulse(proc: subprocess.Popen) -> None:
    """Stop a server :func:`start_pulse` started (killed if it has not gone in 5 s)."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def pulse_available() -> bool:
    return bool(shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay"))


def open_live_backend(performer: str):
    """What ``letsplay live`` opens by default for ``performer`` (a name or a file): returns
    ``(performer reference, backend, instrument)``; a pipelined backend gets one torch
    thread per stage, as the command gives it."""
    import torch

    from letsplay.realtime.backends import BackendOptions, open_backend
    from letsplay.realtime.performers import performer_instrument, resolve_performer

    ref = resolve_performer(performer, None)
    backend = open_backend(ref, BackendOptions(pipeline=None))
    if backend.pipeline:
        torch.set_num_threads(1)
    return ref, backend, performer_instrument(ref) or "cello"
