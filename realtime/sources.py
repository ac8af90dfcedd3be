"""Audio sources: a live microphone, a file, an in-memory signal (the demo).

Every source delivers mono float32 at the spec's sample rate through one interface::

    src.start()
    block, start = src.read(timeout=0.05)   # samples and the clock position of block[0]
    src.finished                            # True once a finite source is exhausted
    src.stop()

The sample counter of each source is the master clock (DESIGN.md "One clock"): for the
microphone it counts captured samples, for a file played to the speakers it counts the
samples the output device has consumed, and for a file read at real-time pace without
an output device it counts samples released by the wall clock.

``MicSource``: a sounddevice ``InputStream`` whose callback only copies into a
preallocated :class:`~letsplay.realtime.ringbuffer.AudioRing` -- no allocation, no
locks, no model work. A device that cannot run at the spec rate is opened at its own
rate and resampled (soxr) on the consumer side. When the device disappears, ``read``
reports it (``lost``) and retries opening it every ``reopen_s`` seconds: the loss and the
recovery are logged once each, the retries at most once a minute (:class:`OutageLog`),
and what PortAudio / ALSA print from C during a retry goes to /dev/null.

``FileSource`` streams a file block by block (a 10-hour file is never loaded whole),
either as fast as the consumer reads or at real-time pace; ``play=True`` sends it to
the speakers and the output device's consumption becomes the clock.
``ArraySource`` is the same over an in-memory signal (the built-in demo).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letsplay.models.audio import AudioError, stream_audio
from letsplay.realtime.ringbuffer import AudioRing

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """An audio source that cannot be opened; the message says what to do."""


@dataclass
class SourceStats:
    """Counters a source keeps for the engine's statistics."""

    overrun_samples: int = 0  # captured samples lost because the reader was too slow
    device_overflows: int = 0  # input overflows reported by the audio driver
    underruns: int = 0  # output callbacks that found no audio ready (playback)
    lost: int = 0  # times the device disappeared
    reopened: int = 0  # times it came back


class AudioSource:
    """Base: mono float32 blocks at ``sample_rate`` with their clock positions."""

    sample_rate: int
    name: str = "source"

    def __init__(self) -> None:
        self.stats = SourceStats()

    def start(self) -> None:  # pragma: no cover - trivial default
        pass

    def stop(self) -> None:  # pragma: no cover - trivial default
        pass

    @property
    def finished(self) -> bool:
        return False

    @property
    def lost(self) -> bool:
        """True while a live device is gone (the engine shows it and keeps running)."""
        return False

    def read(self, timeout: float = 0.05) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def __enter__(self) -> AudioSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- outages


class OutageLog:
    """Logs an outage so that a night-long one does not flood an installation's log: the
    first failure once at WARNING, repeats at most once per ``every_s`` at INFO with how
    many there were, the recovery once at WARNING. ``clock``: seconds, monotonic."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.every_s = every_s
        self.clock = clock
        self.since: float | None = None  # when the outage began; None while all is well
        self.failures = 0  # failures since then (the first included)
        self._last = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, message: str) -> None:
        now = self.clock()
        if self.since is None:
            self.since, self.failures, self._last = now, 1, now
            self.log.warning("%s", message)
            return
        self.failures += 1
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info("%s (still failing: %d attempts in %.0f s)", message, self.failures, now - self.since)

    def recovered(self, message: str) -> None:
        if self.since is None:
            return
        self.log.warning("%s (after %.0f s and %d failed attempts)", message, self.clock() - self.since,
                         self.failures)
        self.since = None


@contextlib.contextmanager
def quiet_c_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (restored after): PortAudio and ALSA
    print their own lines to it from C on every failed device query or open, which a
    retry loop would repeat every second. Python's own logging is flushed first, and
    Python's ``sys.stderr`` is moved off fd 2 (:func:`_python_stderr_off_fd2`), so what other
    threads print meanwhile -- the live status line, log records -- still arrives."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to silence
        yield
        return
    _python_stderr_off_fd2()
    try:
        for h in logging.root.handlers:
            with contextlib.suppress(Exception):
                h.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_STDERR_MOVED = threading.Lock()


def _python_stderr_off_fd2() -> None:
    """Once per process: when ``sys.stderr`` writes to fd 2 itself, give it (and the logging
    handlers that write to it) a duplicate of fd 2 of its own, so silencing fd 2 for C
    libraries silences only them. A ``sys.stderr`` that is not fd 2 (a host program's,
    pytest's capture) is left as it is."""
    with _STDERR_MOVED:
        old = sys.stderr
        try:
            if old is None or old.fileno() != 2:
                return
        except (AttributeError, OSError, ValueError):
            return
        old.flush()
        new = open(os.dup(2), "w", buffering=1, encoding=old.encoding, errors=old.errors)  # noqa: SIM115
        sys.stderr = new
        for logger in [logging.root, *logging.root.manager.loggerDict.values()]:
            for h in getattr(logger, "handlers", []):
                if isinstance(h, logging.StreamHandler) and h.stream is old:
                    h.setStream(new)


# --------------------------------------------------------------------------- devices


def list_devices() -> list[dict]:
    """Audio devices as PortAudio sees them (index, name, channels, default rate)."""
    sd = _sounddevice()
    out = []
    for i, d in enumerate(sd.query_devices()):
        out.append({"index": i, "name": d["name"], "inputs": d["max_input_channels"],
                    "outputs": d["max_output_channels"], "default_rate": d["default_samplerate"],
                    "hostapi": sd.query_hostapis(d["hostapi"])["name"]})
    return out


def pulse_sources() -> list[dict]:
    """Capture sources of a running PulseAudio / PipeWire server (``pactl list short
    sources``): name, driver, sample spec, state; the name is what ``PULSE_SOURCE`` takes.
    Empty when ``pactl`` is missing or no server answers."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return []
    try:
        r = subprocess.run([pactl, "list", "short", "sources"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("pactl: %s", e)
        return []
    if r.returncode != 0:
        log.debug("pactl list short sources: %s", r.stderr.strip())
        return []
    out = []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) >= 2:
            out.append({"index": int(f[0]) if f[0].isdigit() else f[0], "name": f[1],
                        "driver": f[2] if len(f) > 2 else "", "spec": f[3] if len(f) > 3 else "",
                        "state": f[4] if len(f) > 4 else "", "monitor": f[1].endswith(".monitor")})
    return out


NO_INPUT_HINT = ("list the devices with `letsplay devices`, then pick one with --device NAME|INDEX; with "
                 "PulseAudio / PipeWire, choose a source with PULSE_SOURCE=NAME (a name from `letsplay devices`) "
                 "and --device pulse")


def output_available() -> bool:
    """True when PortAudio has a default output device (speakers, or a sound server)."""
    try:
        sd = _sounddevice()
        sd.query_devices(kind="output")
        return True
    except Exception:  # noqa: BLE001 - no library, no device: no playback
        return False


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise SourceError(f"cannot load PortAudio ({e}); install it: apt-get install libportaudio2") from e
    return sd


def resolve_device(device: str | int | None, kind: str = "input") -> int | None:
    """A device index from an index, an exact name, or a unique substring of a name."""
    if device is None or isinstance(device, int):
        return device
    if isinstance(device, str) and device.isdigit():
        return int(device)
    devs = [d for d in list_devices() if d["inputs" if kind == "input" else "outputs"] > 0]
    exact = [d for d in devs if d["name"] == device]
    match = exact or [d for d in devs if device.lower() in d["name"].lower()]
    if len(match) == 1:
        return match[0]["index"]
    names = ", ".join(f"{d['index']}: {d['name']}" for d in devs) or "none"
    if not match:
        raise SourceError(f"no {kind} device matches {device!r}; available: {names} "
                          f"(see `letsplay devices`)")
    raise SourceError(f"{device!r} matches several {kind} devices ({names}); give the index")


# --------------------------------------------------------------------------- microphone


STALL_S = 2.0  # an input stream that delivers nothing for this long is treated as lost


class MicSource(AudioSource):
    """Live capture through sounddevice; the callback only copies into a ring."""

    name = "mic"

    def __init__(self, sample_rate: int, device: str | int | None = None, channels: int | None = None,
                 blocksize: int = 256, ring_seconds: float = 4.0, reopen_s: float = 1.0) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.device_spec = device
        self.channels = channels
        self.blocksize = blocksize
        self.reopen_s = reopen_s
        self.ring_seconds = ring_seconds
        self.ring = AudioRing(int(ring_seconds * sample_rate) + 1)
        self._stream = None
        self._scratch = np.zeros(1, dtype=np.float32)
        self._resampler = None
        self._device_rate = sample_rate
        self._lost = False
        # an outage is under way: from the loss until audio flows again (a reopened stream
        # that delivers nothing and stalls again is the same outage, not a new one)
        self._lost_reported = False
        self._stopping = False
        self._next_try = 0.0
        self._outage = OutageLog(log)
        self._last_audio = time.monotonic()  # the audio thread's last delivery
        self._flowing = False  # the stream open now has delivered audio
        self._out_pos = 0  # clock: samples delivered at sample_rate
        self.device_name = "?"

    # the audio thread -------------------------------------------------------------
    def _callback(self, indata, frames, time_info, status) -> None:  # noqa: ARG002
        self._last_audio = time.monotonic()
        self._flowing = True
        if status and status.input_overflow:
            self.stats.device_overflows += 1
        s = self._scratch[:frames]
        if indata.shape[1] == 1:
            s[:] = indata[:, 0]
        else:
            np.sum(indata, axis=1, out=s)
            s *= 1.0 / indata.shape[1]
        self.ring.write(s)

    def _finished(self) -> None:
        if not self._stopping:
            self._lost = True  # the device went away under us

    # control ----------------------------------------------------------------------
    def _open(self) -> None:
        sd = _sounddevice()
        dev = resolve_device(self.device_spec, "input")
        try:
            info = sd.query_devices(dev, "input")
        except Exception as e:  # PortAudio: "Error querying device -1" when there is no default input
            if dev is None:
                raise SourceError(f"there is no audio input device (no default input: no microphone, or no "
                                  f"sound server running); {NO_INPUT_HINT}") from e
            raise
        if int(info["max_input_channels"]) < 1:
            raise SourceError(f"{info['name']!r} has no input channels (an output device); {NO_INPUT_HINT}")
        self.device_name = info["name"]
        ch = self.channels or min(2, int(info["max_input_channels"])) or 1
        rate = self.sample_rate
        try:
            sd.check_input_settings(device=dev, channels=ch, samplerate=rate, dtype="float32")
        except Exception:
            rate = int(info["default_samplerate"])
            if rate != self.sample_rate:
                log.info("%s cannot capture at %d Hz; capturing at %d Hz and resampling",
                         self.device_name, self.sample_rate, rate)
        # Set up afresh on every open: a device retried again and again while unplugged must
        # not grow the ring, and one that comes back at the spec rate needs no resampler.
        capacity = int(self.ring_seconds * rate) + 1
        if self.ring.capacity != capacity:
            self.ring = AudioRing(capacity)
        self._resampler = None
        if rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32")
        self._device_rate = rate
        self._scratch = np.zeros(max(self.blocksize, 1) * 64, dtype=np.float32)
        self._stream = sd.InputStream(device=dev, channels=ch, samplerate=rate, dtype="float32",
                                      blocksize=self.blocksize, latency="low",
                                      callback=self._callback, finished_callback=self._finished)
        self._last_audio = time.monotonic()
        self._flowing = False
        self._stream.start()
        self._lost = False
        log.info("capturing from %r (%d ch, %d Hz)", self.device_name, ch, rate)

    def start(self) -> None:
        self._stopping = False
        try:
            self._open()
        except SourceError:
            raise
        except Exception as e:
            which = "the default input device" if self.device_spec is None else f"input device {self.device_spec!r}"
            raise SourceError(f"cannot open {which}: {e}; {NO_INPUT_HINT}") from e

    def stop(self) -> None:
        self._stopping = True
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            except Exception as e:  # a vanished device can fail to close
                log.debug("closing the input stream: %s", e)
            self._stream = None

    @property
    def lost(self) -> bool:
        """The device is gone, or reopened but has delivered nothing yet."""
        return self._lost or self._lost_reported

    def _try_reopen(self) -> None:
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + self.reopen_s
        try:
            with quiet_c_stderr():  # PortAudio / ALSA print lines of their own at every failed try
                self.stop()
                self._stopping = False
                self._open()
        except Exception as e:
            self._outage.failed(f"input device {self.device_name!r} is still unavailable ({e}); retrying every "
                                f"{self.reopen_s:.1f} s")
            self._lost = True
            return
        self.stats.reopened += 1  # "back" is said once audio flows from it (read)

    def read(self, timeout: float = 0.05) -> tuple[np.ndarray, int]:
        if self._stream is not None and not self._stopping:
            if not self._stream.active:
                self._lost = True  # stopped without us asking: the device is gone
            elif time.monotonic() - self._last_audio > STALL_S:
                self._lost = True  # "running" but silent for seconds: a sound server died under it
        if self._lost:
            if not self._lost_reported:
                self._lost_reported = True
                self.stats.lost += 1
                self._outage.failed(f"input device {self.device_name!r} is gone; retrying every "
                                    f"{self.reopen_s:.1f} s (repeats are logged at most once a minute)")
            self._try_reopen()
            if self._lost:
                time.sleep(min(timeout, 0.05))
                return np.zeros(0, np.float32), self._out_pos
        deadline = time.monotonic() + timeout
        while self.ring.available() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        x, _ = self.ring.read()
        if self._lost_reported and self._flowing:  # the reopened stream delivers: the outage is over
            self._lost_reported = False
            self._outage.recovered(f"input device {self.device_name!r} is back")
        self.stats.overrun_samples = self.ring.overrun_samples
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        start = self._out_pos
        self._out_pos += len(x)
        return x, start


# --------------------------------------------------------------------------- files & arrays


class _PacedSource(AudioSource):
    """Blocks from an iterator, as fast as read or paced by a clock, optionally played."""

    def __init__(self, blocks: Iterator[np.ndarray], sample_rate: int, realtime: bool,
                 play: bool, output_device: str | int | None, block: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.realtime = realtime or play
        self.play = play
        self.output_device = output_device
        self.block = block
        self._blocks = blocks
        self._pending = np.zeros(0, np.float32)
        self._eof = False
        self._pos = 0  # samples delivered (the clock)
        self._t0: float | None = None
        self._out = None
        self._ring: AudioRing | None = None
        self._play_pos = 0  # samples handed to the output device
        self._play_done = threading.Event()

    def _take(self, n: int) -> np.ndarray:
        """Up to n samples from the underlying blocks (fewer only at the end)."""
        while len(self._pending) < n and not self._eof:
            try:
                self._pending = np.concatenate([self._pending, next(self._blocks)])
            except StopIteration:
                self._eof = True
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    # playback: the output device pulls; what it plays goes to the ring for the engine
    def _out_callback(self, outdata, frames, time_info, status) -> None:  # noqa: ARG002
        if status and status.output_underflow:
            self.stats.underruns += 1
        x = self._prefetch.read(frames)
        n = len(x)
        outdata[:n, 0] = x
        outdata[n:, 0] = 0.0
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        if n:
            self._ring.write(x)
        elif self._eof_prefetch:
            raise _sd_complete()

    def start(self) -> None:
        self._t0 = time.monotonic()
        if not self.play:
            return
        sd = _sounddevice()
        dev = resolve_device(self.output_device, "output")
        self._ring = AudioRing(self.sample_rate * 4)
        self._prefetch = _Prefetch(self, self.sample_rate * 2)
        self._eof_prefetch = False
        self._prefetch.start()
        try:
            self._out = sd.OutputStream(device=dev, channels=1, samplerate=self.sample_rate,
                                        dtype="float32", blocksize=512, latency="low",
                                        callback=self._out_callback,
                                        finished_callback=self._play_done.set)
            self._out.start()
        except Exception as e:
            self._prefetch.stop()
            raise SourceError(f"cannot play to output device {self.output_device!r}: {e}; "
                              f"run without playback (--no-play) or pick a device") from e

    def stop(self) -> None:
        if self._out is not None:
            try:
                self._out.stop()
                self._out.close()
            except Exception as e:
                log.debug("closing the output stream: %s", e)
            self._out = None
            self._prefetch.stop()

    @property
    def finished(self) -> bool:
        if self.play:
            return self._play_done.is_set() and self._ring is not None and self._ring.available() == 0
        return self._eof and len(self._pending) == 0

    def read(self, timeout: float = 0.05) -> tuple[np.ndarray, int]:
        if self.play:
            deadline = time.monotonic() + timeout
            while self._ring.available() == 0 and time.monotonic() < deadline and not self.finished:
                time.sleep(0.001)
            x, start = self._ring.read()
            self.stats.overrun_samples = self._ring.overrun_samples
            return x, start
        if not self.realtime:
            x = self._take(self.block)
            start = self._pos
            self._pos += len(x)
            return x, start
        if self._t0 is None:
            self._t0 = time.monotonic()
        # Release what the wall clock has reached, waiting up to `timeout` for a block.
        due = int((time.monotonic() - self._t0) * self.sample_rate)
        if due - self._pos < self.block:
            wait = (self._pos + self.block - due) / self.sample_rate
            time.sleep(max(0.0, min(wait, timeout)))
            due = int((time.monotonic() - self._t0) * self.sample_rate)
        x = self._take(max(0, due - self._pos))
        start = self._pos
        self._pos += len(x)
        return x, start


def _sd_complete():
    import sounddevice as sd

    return sd.CallbackStop()


class _Prefetch:
    """Decodes ahead on a thread so the output callback only copies."""

    def __init__(self, src: _PacedSource, capacity: int) -> None:
        self.src = src
        self.ring = AudioRing(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="letsplay-prefetch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            room = self.ring.capacity - self.ring.available()
            if room < 4096:
                time.sleep(0.005)
                continue
            x = self.src._take(min(room, 8192))
            if len(x) == 0:
                self.src._eof_prefetch = True
                return
            self.ring.write(x)

    def read(self, n: int) -> np.ndarray:
        x, _ = self.ring.read(n)
        return x


class FileSource(_PacedSource):
    """An audio file, streamed (never loaded whole), fast or at real-time pace."""

    name = "file"

    def __init__(self, path: str | Path, sample_rate: int, realtime: bool = False, play: bool = False,
                 output_device: str | int | None = None, block: int = 4096) -> None:
        self.path = Path(path)
        blocks = stream_audio(self.path, sample_rate)
        try:
            first = next(blocks)  # open now: bad files fail here, with AudioError
        except StopIteration as e:
            raise AudioError(f"{path}: the file holds no audio samples (empty)") from e
        super().__init__(_chain(first, blocks), sample_rate, realtime, play, output_device, block)


class ArraySource(_PacedSource):
    """An in-memory signal (the built-in demo), fast or at real-time pace, optionally played."""

    name = "array"

    def __init__(self, samples: np.ndarray, sample_rate: int, realtime: bool = False, play: bool = False,
                 output_device: str | int | None = None, block: int = 4096) -> None:
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.ndim != 1 or len(x) == 0:
            raise AudioError(f"ArraySource needs a non-empty mono signal, got shape {x.shape}")
        super().__init__(iter([x]), sample_rate, realtime, play, output_device, block)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
