"""Where rendered frames go: recordings, keypoint files, OSC, callbacks, pipes.

The engine hands every sink the same two things, both stamped by the master clock
(DESIGN.md, "One clock": the audio sample counter):

* :class:`FrameOut` -- frame ``index`` ``i`` since the stream start, its time ``i / fps``,
  the RGB frame, the 67 keypoints and optional debug views;
* audio blocks ``write_audio(samples, start_sample)`` -- mono float32, where
  ``start_sample`` is the master clock position of ``samples[0]``.

Sinks never invent time: recording timestamps come from ``index`` and ``start_sample``
only, never from a wall clock or a running count, so audio and video cannot drift
apart however long a recording runs, and a dropped frame leaves a gap instead of
shifting everything after it.

Sinks (all follow the :class:`Sink` protocol: ``open`` / ``write_frame`` /
``write_audio`` / ``close``):

* :class:`Mp4Recorder` -- H.264 + AAC in one fragmented MP4, written as it goes, so a
  killed process leaves a playable file (see the class docstring); with ``partial=True``
  it is written under :func:`partial_path` and renamed to its name once complete.
* :class:`KeypointsNpz` -- every frame's keypoints in one ``.npz`` (written atomically
  at ``close``).
* :class:`OscSink` -- one OSC message per frame over UDP, for installations.
* :class:`CallbackSink` -- calls a function with each :class:`FrameOut`.
* :class:`FrameQueue` -- a bounded queue you iterate over from another thread
  (drops the oldest frame when full), for embedding letsplay in other programs.
* :class:`RawVideoSink` -- raw ``rgb24`` frames to a binary stream, to pipe into ffmpeg.
* :class:`MultiSink` -- fans out to several sinks; one failing is logged and disabled,
  the others go on.

OSC message layout (:class:`OscSink`; TouchDesigner's OSC In, Unity (e.g. extOSC / OscJack)
and Max's ``udpreceive`` read it as is). One message per frame, address
``<prefix>/frame`` (default ``/letsplay/frame``), 137 arguments::

    index  type  meaning
    0      i     stream id (0 unless several streams run batched)
    1      i     frame index since the stream start (exact; time = index / fps)
    2      f     frame time in seconds (float32: sub-millisecond for the first ~2.3 hours;
                 use the index for an exact clock on longer runs)
    3, 4   f f   keypoint 0: x, y
    ...
    135,136 f f  keypoint 66: x, y

Keypoints are OpenPose BODY_25 (0-24), left hand (25-45), right hand (46-66),
normalised to [0, 1]: ``x = column / width``, ``y = row / height`` (origin top left).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.mp4 import MP4_CONTAINER_OPTIONS, Mp4Recorder, partial_path
from letsplay.realtime.sinkbase import (
    N_KEYPOINTS,
    FrameOut,
    Sink,
    SinkError,
    _as_frame,
    _as_keypoints,
    _check_output_path,
    fps_fraction,
)

__all__ = [
    "MP4_CONTAINER_OPTIONS", "N_KEYPOINTS", "CallbackSink", "FrameOut", "FrameQueue", "KeypointsNpz", "Mp4Recorder",
    "MultiSink", "OscSink", "RawVideoSink", "Sink", "SinkError", "fps_fraction", "partial_path",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- keypoints


class KeypointsNpz:
    """Collects every frame's keypoints and writes one ``.npz`` at ``close``.

    Arrays: ``index`` [N] int64, ``time`` [N] float64 (seconds), ``stream`` [N] int64,
    ``keypoints`` [N, 67, 2] float32 (normalised x, y), and ``spec``: a JSON string
    ``{"audio": AudioSpec, "video": VideoSpec}`` (read it back with
    ``json.loads(str(z["spec"]))``). Frames of all streams are kept, in arrival order.
    The file appears atomically (temp file in the same folder, then rename): a reader
    never sees half a file, and a crash leaves the previous file, if any, untouched.
    The folder is checked at ``open``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._rows: list[tuple[int, float, int, np.ndarray]] = []
        self._spec: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeypointsNpz({str(self.path)!r})"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        self.path = _check_output_path(self.path, "keypoints file")
        self._spec = json.dumps({"audio": audio.to_dict(), "video": video.to_dict()}, sort_keys=True)
        self._rows = []

    def write_frame(self, f: FrameOut) -> None:
        if self._spec is None:
            raise RuntimeError(f"{self!r}: call open() before writing")
        kp = _as_keypoints(f, repr(self)).copy()
        with self._lock:
            self._rows.append((int(f.index), float(f.time), int(f.stream), kp))

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            if self._spec is None:
                return
            rows, self._rows = self._rows, []
            spec, self._spec = self._spec, None
        n = len(rows)
        arrays = {
            "index": np.array([r[0] for r in rows], np.int64),
            "time": np.array([r[1] for r in rows], np.float64),
            "stream": np.array([r[2] for r in rows], np.int64),
            "keypoints": (np.stack([r[3] for r in rows]) if n else np.zeros((0, N_KEYPOINTS, 2))).astype(np.float32),
            "spec": np.array(spec),
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise SinkError(f"{self!r}: writing the keypoints failed ({e}); check the free space") from e
            raise
        log.info("%r: wrote %d frames", self, n)


# --------------------------------------------------------------------------- OSC


class OscSink:
    """Sends one OSC message per frame over UDP: ``<prefix>/frame`` with
    ``[stream, index, time, x0, y0, ..., x66, y66]`` (layout in the module docstring).

    The host name is resolved once at ``open`` (no DNS lookups in the frame loop) and the
    socket is non-blocking, so a send never stalls the caller. Send errors (nobody
    listening on some systems, a full socket buffer, the network gone) are counted in
    ``errors`` and logged (the first, then every 100th), never raised.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, prefix: str = "/letsplay") -> None:
        if not prefix.startswith("/"):
            raise ValueError(f"OscSink: the OSC prefix must start with '/', got {prefix!r} (e.g. '/letsplay')")
        if not 0 < int(port) < 65536:
            raise ValueError(f"OscSink: port must be 1..65535, got {port}")
        self.host = host
        self.port = int(port)
        self.address = prefix.rstrip("/") + "/frame"
        self.sent = 0
        self.errors = 0
        self._client: Any = None

    def __repr__(self) -> str:
        return f"OscSink({self.host}:{self.port}{self.address})"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        from pythonosc.udp_client import UDPClient

        try:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise SinkError(f"{self!r}: cannot resolve the OSC host {self.host!r} ({e}); "
                            f"give an IP address such as 127.0.0.1") from e
        ip = info[0][4][0]
        self._client = UDPClient(ip, self.port)  # an IP literal: sendto never resolves again
        log.info("%r: sending to %s:%d", self, ip, self.port)

    def write_frame(self, f: FrameOut) -> None:
        from pythonosc.osc_message_builder import OscMessageBuilder

        if self._client is None:
            raise RuntimeError(f"{self!r}: call open() before writing")
        kp = _as_keypoints(f, repr(self))
        b = OscMessageBuilder(address=self.address)
        b.add_arg(int(f.stream), OscMessageBuilder.ARG_TYPE_INT)
        b.add_arg(int(f.index), OscMessageBuilder.ARG_TYPE_INT)
        b.add_arg(float(f.time), OscMessageBuilder.ARG_TYPE_FLOAT)
        for v in kp.ravel().tolist():  # x0, y0, x1, y1, ...
            b.add_arg(v, OscMessageBuilder.ARG_TYPE_FLOAT)
        try:
            self._client.send(b.build())
            self.sent += 1
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("%r: UDP send failed (%s); %d failures so far, frames go on", self, e, self.errors)

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        pass

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            log.info("%r: %d messages sent, %d send errors", self, self.sent, self.errors)


# --------------------------------------------------------------------------- callbacks, queue


class CallbackSink:
    """Calls ``fn(frame_out)`` for every frame (and ``on_audio(samples, start_sample)``
    for every audio block, if given), in the engine's thread: keep them quick."""

    def __init__(self, fn: Callable[[FrameOut], object],
                 on_audio: Callable[[np.ndarray, int], object] | None = None) -> None:
        self.fn = fn
        self.on_audio = on_audio

    def __repr__(self) -> str:
        return f"CallbackSink({getattr(self.fn, '__qualname__', self.fn)!r})"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        pass

    def write_frame(self, f: FrameOut) -> None:
        self.fn(f)

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        if self.on_audio is not None:
            self.on_audio(samples, start_sample)

    def close(self) -> None:
        pass


class FrameQueue:
    """A bounded queue of frames for another thread to consume: the engine never waits.

    When the consumer falls behind and the queue is full, the *oldest* frame is dropped
    (``dropped`` counts them): a live consumer wants the newest frame. Iterate to consume;
    the iteration ends once the sink is closed and the queue is empty::

        q = FrameQueue(maxsize=4)
        engine = Engine(..., sinks=[q])      # engine runs in its own thread
        for f in q:                          # FrameOut, in order, newest kept
            show(f.frame)
    """

    def __init__(self, maxsize: int = 8) -> None:
        if maxsize < 1:
            raise ValueError(f"FrameQueue: maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self.dropped = 0
        self._q: collections.deque[FrameOut] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False

    def __repr__(self) -> str:
        return f"FrameQueue(maxsize={self.maxsize})"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        with self._cv:
            self._closed = False

    def write_frame(self, f: FrameOut) -> None:
        with self._cv:
            if len(self._q) >= self.maxsize:
                self._q.popleft()
                self.dropped += 1
            self._q.append(f)
            self._cv.notify()

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        pass

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._q)

    def get(self, timeout: float | None = None) -> FrameOut | None:
        """The oldest queued frame; waits up to ``timeout`` s (None: until one comes).
        Returns None on timeout, or when the sink is closed and nothing is left."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._q or self._closed, timeout):
                return None
            return self._q.popleft() if self._q else None

    def __iter__(self) -> Iterator[FrameOut]:
        while True:
            f = self.get()
            if f is None:
                return
            yield f


# --------------------------------------------------------------------------- raw pipe


class RawVideoSink:
    """Raw ``rgb24`` frames, back to back, to a binary stream (stdout by default), e.g.::

        letsplay render song.wav --raw | ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH -r 30 -i - out.mp4

    (``WxH``: the performer's video size, e.g. 256x256 for the shipped ones; ``letsplay``
    prints it when raw output starts).

    Raw video carries no timestamps, so a dropped frame would shift everything after it:
    with ``fill_gaps`` (default) the previous frame is written again for every missing
    index, keeping frame n at n / fps. When the reader goes away (BrokenPipeError) the
    sink logs it and stops quietly; ``broken`` tells, and ``on_broken`` (if given) is called
    once, e.g. ``engine.request_stop`` so that no more frames are computed for nobody.
    Only frames of ``stream_id`` are written.
    """

    def __init__(self, stream: IO[bytes] | None = None, *, fill_gaps: bool = True, stream_id: int = 0,
                 on_broken: Callable[[], object] | None = None) -> None:
        self._out = stream if stream is not None else sys.stdout.buffer
        self.fill_gaps = fill_gaps
        self.stream_id = stream_id
        self.on_broken = on_broken
        self.frames_written = 0  # frames written, repeats included
        self.repeated = 0  # frames written again to fill gaps
        self.broken = False
        self._last: tuple[int, bytes] | None = None
        self._vspec: VideoSpec | None = None

    def __repr__(self) -> str:
        return f"RawVideoSink({getattr(self._out, 'name', type(self._out).__name__)!r})"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        self._vspec = video
        self._last = None
        log.info("%r: raw rgb24 %dx%d at %s fps: ffmpeg -f rawvideo -pix_fmt rgb24 -s %dx%d -r %s -i - out.mp4",
                 self, video.width, video.height, fps_fraction(video.fps), video.width, video.height,
                 fps_fraction(video.fps))

    def write_frame(self, f: FrameOut) -> None:
        if self.broken or f.stream != self.stream_id:
            return
        if self._vspec is None:
            raise RuntimeError(f"{self!r}: call open() before writing")
        data = np.ascontiguousarray(_as_frame(f, self._vspec, repr(self))).tobytes()
        chunks = []
        if self._last is not None:
            gap = f.index - self._last[0] - 1
            if gap < 0:
                log.warning("%r: frame %d arrived after frame %d; skipped", self, f.index, self._last[0])
                return
            if gap > 0 and self.fill_gaps:
                chunks = [self._last[1]] * gap
                self.repeated += gap
        chunks.append(data)
        try:
            for c in chunks:
                self._out.write(c)
            self._out.flush()
        except BrokenPipeError:
            self._on_broken_pipe()
            return
        self.frames_written += len(chunks)
        self._last = (f.index, data)

    def _on_broken_pipe(self) -> None:
        self.broken = True
        log.info("%r: the reader closed the pipe after %d frames; raw output stopped", self, self.frames_written)
        if self.on_broken is not None:
            self.on_broken()
        # Python would complain again when it flushes stdout at exit: point the fd at /dev/null.
        try:
            if self._out is sys.stdout.buffer or self._out is sys.stdout:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        pass

    def close(self) -> None:
        if self.broken:
            return
        try:
            self._out.flush()
        except BrokenPipeError:
            self._on_broken_pipe()
        except ValueError:  # already closed by its owner
            pass


# --------------------------------------------------------------------------- fan-out


class MultiSink:
    """Fans every call out to several sinks, isolating failures.

    ``open`` is all-or-nothing: a sink that cannot open (unwritable folder, bad host)
    raises at once, after closing the ones already opened, so a mistake shows before
    rendering starts. After that, a sink that raises in ``write_frame`` / ``write_audio``
    is logged with its traceback and disabled (``failed`` maps it to the error); the
    others go on. ``close`` closes every sink (disabled ones too, to release files),
    logging errors instead of raising.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.failed: list[tuple[Sink, BaseException]] = []  # (sink, the error that disabled it)
        self._off: set[int] = set()  # id() of disabled sinks (sinks need not be hashable)

    def __repr__(self) -> str:
        return f"MultiSink({self.sinks!r})"

    @property
    def active(self) -> list[Sink]:
        return [s for s in self.sinks if id(s) not in self._off]

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        self.failed, self._off = [], set()
        opened: list[Sink] = []
        for s in self.sinks:
            try:
                s.open(audio, video)
            except BaseException:
                for o in reversed(opened):
                    try:
                        o.close()
                    except Exception:
                        log.exception("%r: closing after another sink failed to open", o)
                raise
            opened.append(s)

    def _disable(self, s: Sink, e: Exception, what: str) -> None:
        self.failed.append((s, e))
        self._off.add(id(s))
        log.error("%r failed in %s and is disabled; the other sinks go on", s, what, exc_info=e)

    def write_frame(self, f: FrameOut) -> None:
        for s in self.active:
            try:
                s.write_frame(f)
            except Exception as e:
                self._disable(s, e, f"write_frame (frame {f.index})")

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        for s in self.active:
            try:
                s.write_audio(samples, start_sample)
            except Exception as e:
                self._disable(s, e, f"write_audio (sample {start_sample})")

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:
                if id(s) not in self._off:
                    self._disable(s, e, "close")
                else:
                    log.error("%r failed to close", s, exc_info=e)
