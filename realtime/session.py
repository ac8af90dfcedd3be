"""What a live session keeps across engine runs, without any GUI: the newest frame for a
display and the session's sinks on one continuous timeline.

* :class:`LatestFrame` -- a sink that keeps only the newest frame of one stream; a display
  takes it when it draws (a lock held for one pointer swap, so the engine never waits).
* :class:`SessionSinks` -- the recording and the fixed sinks (keypoints, OSC, ...) of a whole
  session. An engine runs once; each new run's frame indices and audio sample positions are
  shifted to follow the previous run's end, so a recording goes on seamlessly across device
  switches and pauses until :meth:`SessionSinks.finish`.

The Qt window (:mod:`letsplay.ui.window`) is their client; nothing here imports Qt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.sinks import FrameOut, Mp4Recorder, MultiSink, Sink, fps_fraction

log = logging.getLogger(__name__)


class LatestFrame:
    """A sink that keeps only the newest frame of one stream; the UI takes it when it draws.

    ``write_frame`` (engine thread) and ``take`` (UI thread) hold the lock for one pointer
    swap, so the engine never waits on the window."""

    def __init__(self, stream: int = 0) -> None:
        self.stream = stream
        self.received = 0  # frames handed over by the engine
        self.replaced = 0  # frames overtaken by a newer one before the UI took them
        self._lock = threading.Lock()
        self._frame: FrameOut | None = None

    def __repr__(self) -> str:
        return "LatestFrame()"

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        pass

    def write_frame(self, f: FrameOut) -> None:
        if f.stream != self.stream:
            return
        with self._lock:
            if self._frame is not None:
                self.replaced += 1
            self._frame = f
            self.received += 1

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> FrameOut | None:
        """The newest frame not taken yet, or None."""
        with self._lock:
            f, self._frame = self._frame, None
        return f


class SessionSinks:
    """The sinks of a whole window session, across engine runs: the recording (started and
    stopped at will) and fixed sinks (keypoints, OSC, ... from the command line).

    Opened by the first run; a later run's ``open`` only moves the timeline on: its frame
    ``index`` and audio ``start_sample`` are shifted to follow the previous run's last
    frame and sample, so the recording is one continuous file. ``close`` (end of a run)
    keeps everything open; :meth:`finish` closes it all (recording finalised).
    A recording that fails is stopped (``failure`` says why); the run goes on.
    """

    def __init__(self, sinks: Sequence[Sink] = (), recorder: Mp4Recorder | None = None) -> None:
        self._fixed = MultiSink(list(sinks))  # one failing is disabled, the others go on
        self._lock = threading.Lock()  # guards the recorder swap against the engine's writes
        self._rec: Mp4Recorder | None = None  # the recording in progress
        self._armed: Mp4Recorder | None = recorder  # opened with the first run
        self._opened = False
        self.audio: AudioSpec | None = None
        self.video: VideoSpec | None = None
        self._frame_off = 0  # this run's frame 0 on the session timeline
        self._sample_off = 0  # this run's sample 0 on the session timeline
        self._next_frame = 0  # session frame after the last one written
        self._audio_end = 0  # session sample after the last one written
        self.failure: str | None = None  # why the recording stopped by itself (None: it did not)

    def __repr__(self) -> str:
        return f"SessionSinks({self._fixed.sinks!r}, recording={self.recording_path})"

    @property
    def recording_path(self) -> Path | None:
        rec = self._rec or self._armed
        return rec.path if rec is not None else None

    @property
    def recorder(self) -> Mp4Recorder | None:
        return self._rec

    # the Sink protocol (engine thread, except open/close) -----------------------
    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        if not self._opened:
            self._fixed.open(audio, video)  # a bad path fails here, before the run starts
            armed, self._armed = self._armed, None
            if armed is not None:
                try:
                    armed.open(audio, video)
                except BaseException:
                    self._fixed.close()
                    self._armed = armed
                    raise
            self.audio, self.video, self._opened = audio, video, True
            with self._lock:
                self._rec = armed
            return
        old = self.video
        same = (old is not None and self.audio is not None and audio.sample_rate == self.audio.sample_rate
                and (video.height, video.width, video.fps) == (old.height, old.width, old.fps))
        if not same:
            self.stop_recording(reason="the new performer makes frames of another size or rate")
        self.audio, self.video = audio, video
        rate = fps_fraction(video.fps)
        frame = max(self._next_frame, math.ceil(Fraction(self._audio_end) * rate / audio.sample_rate))
        with self._lock:
            self._frame_off = frame
            self._sample_off = round(Fraction(frame) * audio.sample_rate / rate)

    def write_frame(self, f: FrameOut) -> None:
        if self._frame_off:
            i = f.index + self._frame_off
            f = dataclasses.replace(f, index=i, time=i / self.video.fps)
        self._next_frame = max(self._next_frame, f.index + 1)
        self._fixed.write_frame(f)
        with self._lock:
            if self._rec is not None:
                try:
                    self._rec.write_frame(f)
                except Exception as e:  # noqa: BLE001 - a failed recording must not end the show
                    self._fail(e)

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        start = start_sample + self._sample_off
        self._audio_end = max(self._audio_end, start + len(samples))
        self._fixed.write_audio(samples, start)
        with self._lock:
            if self._rec is not None:
                try:
                    self._rec.write_audio(samples, start)
                except Exception as e:  # noqa: BLE001
                    self._fail(e)

    def close(self) -> None:
        """The end of one run: the session goes on (see :meth:`finish`)."""

    # control (UI thread) --------------------------------------------------------
    def _fail(self, e: Exception) -> None:  # called with the lock held
        rec, self._rec = self._rec, None
        self.failure = f"recording to {rec.path} stopped: {e}"
        log.error("%s", self.failure)
        try:
            rec.close()
        except Exception as e2:  # noqa: BLE001
            log.warning("closing the failed recording: %s", e2)

    def start_recording(self, path: str | Path) -> Path:
        """Record from now on to ``path`` (an mp4); raises SinkError when it cannot be written."""
        rec = Mp4Recorder(path)
        self.failure = None
        if not self._opened:
            self._armed = rec  # opens with the first run
            return rec.path
        rec.open(self.audio, self.video)
        with self._lock:
            old, self._rec = self._rec, rec
        if old is not None:
            old.close()
        log.info("recording to %s", rec.path)
        return rec.path

    def stop_recording(self, reason: str | None = None) -> Mp4Recorder | None:
        """Stop and finalise the recording; returns the recorder (None if none ran)."""
        self._armed = None
        with self._lock:
            rec, self._rec = self._rec, None
        if rec is None:
            return None
        if reason:
            self.failure = f"recording to {rec.path} stopped: {reason}"
            log.warning("%s", self.failure)
        try:
            rec.close()
        except Exception as e:  # noqa: BLE001 - report, do not crash the window
            self.failure = f"finishing the recording {rec.path} failed: {e}"
            log.error("%s", self.failure)
        return rec

    def finish(self) -> None:
        """End of the session: finalise the recording and close the fixed sinks."""
        self.stop_recording()
        if self._opened:
            self._opened = False
            self._fixed.close()
