"""Recording the stream to one MP4 file: :class:`Mp4Recorder` (H.264 + AAC, fragmented,
timestamps from the master clock) and :func:`partial_path` (where an output is written
until it is complete).

:mod:`letsplay.realtime.sinks` re-exports both; the sink contract they follow lives in
:mod:`letsplay.realtime.sinkbase`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.sinkbase import (
    FrameOut,
    SinkError,
    _as_audio,
    _as_frame,
    _check_output_path,
    _warn_sometimes,
    fps_fraction,
)

log = logging.getLogger(__name__)


MP4_CONTAINER_OPTIONS = {
    # Fragmented MP4: a new self-contained fragment at every keyframe; the header goes out
    # after the first fragment (delay_moov), so it can carry the AAC priming edit list.
    "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
    "flush_packets": "1",  # hand what the muxer wrote to the OS at once, not when a 32 KiB buffer fills
}


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where an output is written until it is complete: ``song.mp4`` -> ``song.partial.mp4``
    in the same folder (``song.partial-2.mp4``, ``-3``, ... when that name is taken, so an
    earlier partial file is never replaced). An interrupted or failed run leaves it there."""
    path = Path(path)
    cand = path.with_name(f"{path.stem}.partial{path.suffix}")
    k = 2
    while cand.exists() or cand.is_symlink():
        cand = path.with_name(f"{path.stem}.partial-{k}{path.suffix}")
        k += 1
    return cand


class Mp4Recorder:
    """Records the stream to an MP4: H.264 (libx264, yuv420p) video + AAC audio, one file.

    **Timestamps come from the master clock.** Video packet ``pts`` is the frame index in
    a time base of ``1 / fps`` (an exact fraction, so 29.97 works too); audio ``pts`` is the
    sample index in ``1 / sample_rate``. A dropped frame leaves a gap in the video
    timestamps (the previous frame stays on screen), never a renumbering; an audio gap is
    filled with silence and overlapping audio is cut, so after any number of hiccups the
    two tracks still line up sample for frame. At ``close`` the audio is padded with
    silence to the end of the last frame, so both tracks end together: audio past the end
    of the newest frame is held back (up to ``HOLD_S``, 0.25 s; more than that means the
    video stalled, and it is written) and, when the recording stops there (Ctrl-C or
    ``Engine.stop`` between an audio block and its frames), cut at close.

    **Fragmented MP4, written to the final path as it goes** (``movflags =
    frag_keyframe+empty_moov+delay_moov+default_base_moof``, packets flushed as they are
    muxed): a keyframe every ``keyframe_seconds`` starts a new self-contained fragment. If
    the process dies mid-recording (Ctrl-C without cleanup, SIGKILL, a full disk, a power
    cut after the OS wrote its cache), the file still plays up to the last complete
    fragment: about the last ``keyframe_seconds`` is lost (measured: 100 frames written,
    94 play back after SIGKILL; the test checks at least 60). There is
    no rename by default, so a crash cannot leave the recording elsewhere.

    **``partial=True``** (what the ``letsplay`` commands use): the file is written under
    :func:`partial_path` (``take.partial.mp4``) and renamed to ``path`` by a ``close`` that
    finishes a complete recording, so a file already at ``path`` stays untouched until a
    complete one replaces it. A recording that failed (a write error) or that the owner
    marked with :meth:`mark_incomplete` (an interrupted render) keeps the partial name:
    ``kept_partial`` names it after ``close``. A killed process leaves it there too, playable
    as above. A recording closed with nothing written leaves no file.
    ``delay_moov`` writes the header after the first fragment, which lets it carry the
    AAC priming edit list (without it, fragmented audio plays ~23 ms late). Every current
    player (ffmpeg/ffplay, VLC, browsers, QuickTime) plays fragmented MP4; remux with
    ``ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4`` if a tool wants a classic one.

    File time 0 is the start of the first frame written (frame 0 for a recording from the
    stream start; the file's ``comment`` tag names it), so a recording started mid-stream
    does not open with minutes of nothing; both tracks shift by the same whole frame.
    Audio that came before that frame is cut. Write each audio block before (or together
    with) the frames it belongs to, as the engine does: audio still missing
    ``audio_lag_s`` after a frame is written as silence (late audio is then dropped), so a
    recording without any audio stays kill-safe and memory-bounded.

    Frames of other streams than ``stream_id`` are ignored (one recorder per stream).
    Encoding runs in the caller's thread: 256x256 with ``veryfast`` costs ~1.6 ms per frame
    (median; mean 2.5 ms, worst ~20 ms at a keyframe, on this 2-core CPU), so it fits a 30 fps
    loop. Thread-safe (one lock): audio and video may come
    from different threads.
    """

    HOLD_S = 0.25  # audio held back past the newest frame: an engine block (4096 samples, 93 ms) and a frame

    def __init__(self, path: str | os.PathLike[str], crf: int = 20, audio: bool = True, *,
                 preset: str = "veryfast", tune: str | None = "zerolatency", keyframe_seconds: float = 1.0,
                 audio_bitrate: int = 128_000, audio_lag_s: float | None = 2.0, stream_id: int = 0,
                 partial: bool = False) -> None:
        if not 0 <= crf <= 51:
            raise ValueError(f"Mp4Recorder: crf must be in 0..51 (lower = better, 18-23 is typical), got {crf}")
        if not keyframe_seconds > 0:
            raise ValueError(f"Mp4Recorder: keyframe_seconds must be > 0, got {keyframe_seconds}")
        self.path = Path(path)
        self.partial = bool(partial)
        self.writing_path = self.path  # where the bytes go while recording (a partial name with partial=True)
        self.kept_partial: Path | None = None  # after close: the partial file left in place, if any
        self._incomplete: str | None = None  # why close must not give the file its final name
        self.crf = int(crf)
        self.audio = bool(audio)
        self.preset = preset
        self.tune = tune
        self.keyframe_seconds = float(keyframe_seconds)
        self.audio_bitrate = int(audio_bitrate)
        self.audio_lag_s = audio_lag_s
        self.stream_id = stream_id
        self.frames_written = 0  # encoded frames
        self.frames_skipped = 0  # frames with an index at or before the previous one
        self.audio_samples_written = 0  # samples given to the AAC encoder, silence included
        self.silence_inserted = 0  # samples of silence put into audio gaps (and the tail)
        self.audio_samples_cut = 0  # samples dropped because they overlapped earlier audio
        self._lock = threading.Lock()
        self._container: Any = None
        self._failed: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Mp4Recorder({str(self.path)!r})"

    # -- open

    def open(self, audio: AudioSpec, video: VideoSpec) -> None:
        import av  # lazy: only recording needs PyAV

        if self._container is not None:
            raise RuntimeError(f"{self!r} is already open; one recorder writes one file")
        self.path = _check_output_path(self.path, "recording")
        self.writing_path = partial_path(self.path) if self.partial else self.path
        self.kept_partial = None
        self._incomplete = None
        self._aspec, self._vspec = audio, video
        self._rate = fps_fraction(video.fps)
        # libx264 + yuv420p needs even sizes: pad by one edge pixel rather than refuse.
        self._pad = (video.height % 2, video.width % 2)
        if any(self._pad):
            log.info("%r: %dx%d is odd; yuv420p needs even sizes, the recording pads the last row/column",
                     self, video.width, video.height)
        try:
            c = av.open(str(self.writing_path), mode="w", format="mp4",
                        container_options=dict(MP4_CONTAINER_OPTIONS))
        except (OSError, av.error.FFmpegError) as e:
            raise SinkError(f"cannot create the recording {str(self.writing_path)!r}: {e}; check the path, "
                            f"its permissions and the free space") from e
        try:
            vs = c.add_stream("libx264", rate=self._rate)
            vs.width = video.width + self._pad[1]
            vs.height = video.height + self._pad[0]
            vs.pix_fmt = "yuv420p"
            # Frame and encoder time bases stay these; the muxer picks its own stream time base
            # (e.g. 1/15360 for 30 fps) at the header and rescales, exactly.
            self._vtb = 1 / self._rate  # video pts = frame index
            self._atb = Fraction(1, audio.sample_rate)  # audio pts = sample index
            vs.time_base = self._vtb
            cc = vs.codec_context
            cc.gop_size = max(1, round(float(self._rate) * self.keyframe_seconds))  # one fragment each
            # BT.601 limited range: what swscale's rgb24 -> yuv420p produces; say so in the stream.
            cc.colorspace = 6  # AVCOL_SPC_SMPTE170M
            cc.color_primaries = 6  # AVCOL_PRI_SMPTE170M
            cc.color_trc = 6  # AVCOL_TRC_SMPTE170M
            cc.color_range = 1  # AVCOL_RANGE_MPEG
            opts = {"preset": self.preset, "crf": str(self.crf)}
            if self.tune:
                opts["tune"] = self.tune
            vs.options = opts
            self._vstream = vs
            self._astream = None
            if self.audio:
                a = c.add_stream("aac", rate=audio.sample_rate)
                a.layout = "mono"
                a.time_base = self._atb
                a.bit_rate = self.audio_bitrate
                a.codec_context.open()
                self._astream = a
                self._frame_size = a.codec_context.frame_size or 1024
            vs.codec_context.open()
        except Exception as e:
            c.close()
            raise SinkError(f"{self!r}: cannot set up the H.264/AAC encoders ({e}); this PyAV build may lack "
                            f"libx264 (pip install av ships it)") from e
        self._container = c
        self._origin_frame: int | None = None  # the stream frame at file time 0 (set by the first write)
        self._origin_sample = 0  # the master clock sample at file time 0
        self._last_index: int | None = None
        self._good_size = 0  # file size after the last successful write: the end of a complete box
        self._video_end: int | None = None  # master clock sample at the end of the newest frame
        # Audio: pending samples not yet a full encoder frame; _abuf[0] is master clock sample _abuf_start.
        self._abuf = np.zeros(0, np.float32)
        self._abuf_start = 0
        self._pending: list[tuple[int, np.ndarray]] = []  # (start sample, block) before the first frame
        self._pending_n = 0  # samples in _pending
        self._max_pending = 60 * audio.sample_rate  # keep at most a minute of it
        self._max_hold = round(self.HOLD_S * audio.sample_rate)  # audio held back past the newest frame
        self._overlaps = 0
        self._lag_warned = False
        self._failed = None
        self._closed = False
        self.frames_written = self.frames_skipped = 0
        self.audio_samples_written = self.silence_inserted = self.audio_samples_cut = 0
        log.info("%r: recording %dx%d at %s fps%s (fragmented MP4, keyframe every %.2g s)", self, video.width,
                 video.height, self._rate, f" + AAC {audio.sample_rate} Hz" if self.audio else "",
                 self.keyframe_seconds)

    # -- write

    def _check_writable(self) -> None:
        if self._container is None:
            raise RuntimeError(f"{self!r}: call open() before writing" if not self._closed
                               else f"{self!r} is closed")
        if self._failed is not None:
            raise SinkError(f"{self!r} stopped after an earlier write error: {self._failed}")

    def _mux(self, packets: Iterable[Any]) -> None:
        try:
            for p in packets:
                self._container.mux(p)
                self._good_size = self._file_size()  # packets are flushed at once: whole boxes so far
        except OSError as e:
            self._failed = e
            raise SinkError(f"{self!r}: writing failed ({e}); is the disk full or the drive gone? "
                            f"The file is playable up to the last complete fragment") from e

    def _file_size(self) -> int:
        try:
            return os.stat(self.writing_path).st_size
        except OSError:
            return self._good_size

    def _cut_partial_fragment(self) -> None:
        """After a failed write (a full disk), cut the file back to the end of the last
        complete fragment: the half-written one after it would make strict readers fail
        on its last packet. Done at close only, when the muxer writes no more."""
        try:
            if self.writing_path.is_file() and self.writing_path.stat().st_size > self._good_size:
                os.truncate(self.writing_path, self._good_size)
                log.warning("%r: cut the half-written last fragment; %d bytes play", self, self._good_size)
        except OSError as e:
            log.warning("%r: could not cut the half-written last fragment (%s)", self, e)

    def _sample_of_frame(self, index: int) -> int:
        """Master clock sample at which frame ``index`` starts."""
        return math.floor(index * self._aspec.sample_rate / self._rate)

    def _set_origin(self, frame: int) -> None:
        """File time 0 = the start of stream frame ``frame`` (the first frame written). Both
        tracks are stamped relative to it, a constant shift of the master clock, so both
        start at 0 even when the recording begins mid-stream."""
        self._origin_frame = frame
        self._origin_sample = self._abuf_start = self._sample_of_frame(frame)
        self._container.metadata["comment"] = (f"letsplay: time 0 = stream frame {frame} "
                                               f"(sample {self._origin_sample}) at {self._rate} fps")
        pending, self._pending, self._pending_n = self._pending, [], 0
        for start, x in pending:  # audio that came before the first frame; what precedes it is cut
            skip = min(max(0, self._origin_sample - start), len(x))
            self._audio_locked(x[skip:], start + skip)

    def write_frame(self, f: FrameOut) -> None:
        if f.stream != self.stream_id:
            return
        import av

        with self._lock:
            self._check_writable()
            img = _as_frame(f, self._vspec, repr(self))
            if self._origin_frame is None:
                self._video_end = self._sample_of_frame(f.index + 1)  # the held-back audio's limit
                self._set_origin(f.index)
            if f.index < self._origin_frame or (self._last_index is not None and f.index <= self._last_index):
                self.frames_skipped += 1
                _warn_sometimes(self.frames_skipped, "%r: frame %d arrived after frame %s; skipped (timestamps "
                                "must increase); %d skipped so far", self, f.index, self._last_index,
                                self.frames_skipped)
                return
            if any(self._pad):
                img = np.pad(img, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace="itu601")
            vf.pts = f.index - self._origin_frame  # the master clock; gaps stay gaps
            vf.time_base = self._vtb
            packets = self._vstream.encode(vf)
            for p in packets:
                p.duration = 1
            self._mux(packets)
            self._last_index = f.index
            self.frames_written += 1
            self._video_end = self._sample_of_frame(f.index + 1)
            if len(self._abuf):  # audio held back for this frame can go now
                self._push(np.zeros(0, np.float32))
            if self._astream is not None and self.audio_lag_s is not None:
                # Audio this far behind the video is missing: silence keeps the muxer writing fragments.
                due = self._sample_of_frame(f.index + 1) - round(self.audio_lag_s * self._aspec.sample_rate)
                have = self._abuf_start + len(self._abuf)
                if due > have:
                    if not self._lag_warned:
                        self._lag_warned = True
                        log.warning("%r: audio is over %.1f s behind the video (frame %d); writing silence in "
                                    "its place (write audio before the frames it belongs to)", self,
                                    self.audio_lag_s, f.index)
                    self._push_silence(due - have)

    def write_audio(self, samples: np.ndarray, start_sample: int) -> None:
        if not self.audio:
            return
        x = _as_audio(samples, repr(self))
        with self._lock:
            self._check_writable()
            if self._origin_frame is None:
                # Before the first frame, file time 0 is not known yet: hold the audio (bounded).
                self._pending.append((int(start_sample), x.copy()))
                self._pending_n += len(x)
                while self._pending_n > self._max_pending:
                    self._pending_n -= len(self._pending.pop(0)[1])
                return
            self._audio_locked(x, int(start_sample))

    def _audio_locked(self, x: np.ndarray, start: int) -> None:
        if len(x) == 0:
            return
        expected = self._abuf_start + len(self._abuf)  # master clock sample the next audio should start at
        if start > expected:
            self._push_silence(start - expected)
        elif start < expected:
            cut = min(expected - start, len(x))
            self.audio_samples_cut += cut
            self._overlaps += 1
            _warn_sometimes(self._overlaps, "%r: audio block at sample %d overlaps audio up to sample %d; "
                            "%d samples dropped (%d overlapping blocks so far)", self, start, expected, cut,
                            self._overlaps)
            x = x[cut:]
        self._push(x)

    def _push_silence(self, n: int) -> None:
        self.silence_inserted += n
        chunk = 1 << 16  # bounded memory even for an hour-long gap
        while n > 0:
            k = min(n, chunk)
            self._push(np.zeros(k, np.float32))
            n -= k

    def _push(self, x: np.ndarray, final: bool = False) -> None:
        """Append samples and encode every complete encoder frame (the rest waits)."""
        import av

        buf = np.concatenate([self._abuf, x]) if len(self._abuf) else x
        fs = self._frame_size
        n_full = len(buf) // fs * fs
        end = len(buf) if final else n_full
        if not final and self._video_end is not None:
            # Hold back audio past the newest frame's end, so that a recording stopped between
            # an audio block and its frames can still end both tracks together (close cuts it).
            # Bounded: audio more than HOLD_S ahead (the video stalled) is written anyway.
            ahead = self._abuf_start + len(buf) - self._video_end
            if 0 < ahead <= self._max_hold:
                end = min(end, max(0, self._video_end - self._abuf_start) // fs * fs)
        pos = 0
        while pos < end:
            k = min(fs, end - pos)
            af = av.AudioFrame.from_ndarray(buf[None, pos:pos + k], format="fltp", layout="mono")
            af.sample_rate = self._aspec.sample_rate
            af.pts = self._abuf_start + pos - self._origin_sample
            af.time_base = self._atb
            self._mux(self._astream.encode(af))
            pos += k
        self.audio_samples_written += end
        self._abuf = np.array(buf[end:], np.float32)  # a copy: never keep a view on the caller's array
        self._abuf_start = self._abuf_start + end

    # -- close

    @property
    def error(self) -> BaseException | None:
        """The write error that stopped this recording (None while it is fine)."""
        return self._failed

    def mark_incomplete(self, reason: str) -> None:
        """The recording will not be complete (an interrupted or failed render): with
        ``partial=True``, ``close`` finishes the file (playable) but leaves it under its
        partial name instead of replacing ``path``."""
        self._incomplete = reason

    def _settle(self, ok: bool) -> None:
        """partial=True, after the container is closed: give a complete file its final name
        (atomically replacing what was there), or leave the partial one and say where."""
        if not self.partial or self.writing_path == self.path or not self.writing_path.exists():
            return
        if ok and self._incomplete is None and self.frames_written == 0 and self.audio_samples_written == 0:
            self.writing_path.unlink(missing_ok=True)  # nothing was recorded: leave no file at all
            return
        if ok and self._incomplete is None:
            try:
                os.replace(self.writing_path, self.path)
                return
            except OSError as e:
                raise SinkError(f"{self!r}: the recording is complete in {str(self.writing_path)!r} but could "
                                f"not be renamed to {str(self.path)!r} ({e}); rename it yourself") from e
        self.kept_partial = self.writing_path
        log.log(logging.INFO if self._incomplete else logging.WARNING, "%r: %s; the partial recording is in %s",
                self, self._incomplete or "the recording failed", self.writing_path)

    def close(self) -> None:
        """Flush the encoders, pad the audio to the last frame's end, finish the file. Idempotent.
        With ``partial=True`` a complete file is then renamed to ``path`` (see the class)."""
        with self._lock:
            self._closed = True
            c = self._container
            if c is None:
                return
            err: BaseException | None = None
            if self._failed is None:
                try:
                    self._finish_audio()
                    self._mux(self._vstream.encode(None))
                    if self._astream is not None:
                        self._mux(self._astream.encode(None))
                except SinkError as e:
                    err = e
            self._container = None
            try:
                c.close()
            except Exception as e:  # a full disk can fail the last fragment too
                if err is None and self._failed is None:
                    err = SinkError(f"{self!r}: finishing the file failed ({e}); it is playable up to "
                                    f"the last complete fragment")
                    err.__cause__ = e
                else:
                    log.warning("%r: closing after an earlier error: %s", self, e)
            if err is not None or self._failed is not None:
                self._cut_partial_fragment()
            self._settle(err is None and self._failed is None)
            if err is not None:
                raise err
        log.info("%r: closed, %d frames (%d skipped), %.2f s audio (%.2f s silence inserted)", self,
                 self.frames_written, self.frames_skipped, self.audio_samples_written / self._aspec.sample_rate,
                 self.silence_inserted / self._aspec.sample_rate)

    def _finish_audio(self) -> None:
        """Pad the audio with silence to the end of the last frame, then encode what is left."""
        if self._astream is None:
            return
        if self._origin_frame is None:
            if not self._pending:  # nothing was written: an empty file
                return
            # Audio only: start at the frame holding the first sample.
            self._set_origin(math.floor(self._pending[0][0] * self._rate / self._aspec.sample_rate))
        if self._last_index is not None:
            video_end = self._sample_of_frame(self._last_index + 1)
            have = self._abuf_start + len(self._abuf)
            if video_end > have:
                self._push_silence(video_end - have)
            elif have > video_end:  # held-back audio past the last frame: both tracks end together
                keep = max(0, video_end - self._abuf_start)
                self.audio_samples_cut += len(self._abuf) - keep
                self._abuf = self._abuf[:keep]
        self._push(np.zeros(0, np.float32), final=True)

    def __enter__(self) -> Mp4Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
