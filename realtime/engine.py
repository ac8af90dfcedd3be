"""The streaming engine: audio clock -> StreamingCQT -> frame scheduler -> backend -> sinks.

One loop, on its own thread (or the caller's, for ``render``)::

    audio block (source.read) --> sinks.write_audio           [the master clock advances]
        --> StreamingCQT.step --> new CQT columns
        --> every frame i whose newest column frame_column(i) now exists:
              window = the 87 columns ending there
              outputs = backend.step(feeds({"window": window}, state)) ; state <- next_state(outputs)
              --> FrameOut(index=i, time=i/fps, frame, keypoints) --> sinks

Time comes only from the audio sample counter (DESIGN.md "One clock"): frame ``i`` is
at ``i / fps`` seconds of audio, recordings stamp it so, and latency is measured from
the wall time at which the sample that completed frame ``i``'s window arrived to the
wall time the frame left the backend.

**When inference falls behind** (live mode only): after each audio block, if more than
``max_pending`` frames are due, the engine renders only the newest one and counts the
others as *dropped*. Dropped frames are never computed: the recurrent state goes on
from the last rendered frame, and the next rendered frame sees its own, current audio
window. Nothing queues, so latency stays bounded by one frame's compute plus one
audio block. ``render`` mode (files, as fast as possible) never drops: every frame is
computed, so a render equals the offline Performer run on the same audio.

**Pipelined** (``EngineConfig.pipeline``; by default as the backend was opened:
``BackendOptions.pipeline``, the CLI's ``--pipeline auto|on|off``): a frame runs as two halves
(``backend.front`` / ``backend.back``, the export's ``front.onnx`` / ``back.onnx``).
The loop thread runs the front -- KHP, CVG and the STU encoder + CNN-GRU, which hold all
of the recurrent state -- and hands the result to a second thread that runs the
stateless back (the GCN and the decoder) and the sinks. One hand-off slot: while frame t
is in the back half, frame t + 1's front may run; the front of frame t + 2 starts only
once the back thread has taken t + 1 (live: the loop reads audio meanwhile, then the
rule above drops what became stale), so at most two frames are in flight. On two cores
this keeps one thread per core busy instead of two-thread operators that must meet
after every layer: fewer drops, for about half a step more latency. Frames reach the
sinks and ``on_frame`` from that second thread, in order, and are the same frames as
unpipelined.

Other faults: a backend exception on one frame is logged, counted (``errors``) and
that frame skipped -- the state stays at the last good frame and the stream goes on;
a sink that raises is disabled (``MultiSink``); a live device that disappears is
reported (``device_lost``) while the engine keeps running and the source retries.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from letsplay.models.config import DictConfig
from letsplay.models.features import StreamingCQT, frame_column, frames_available
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.stepping import feeds, next_state
from letsplay.realtime.backends import Backend, describe, pipelined
from letsplay.realtime.sinks import FrameOut, MultiSink, Sink
from letsplay.realtime.sources import AudioSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig(DictConfig):
    realtime: bool = True  # live: bound latency by dropping stale frames; False: render every frame
    max_pending: int = 1  # live: frames allowed due at once before older ones are dropped
    read_timeout: float = 0.02  # seconds a source read may wait for audio
    views: bool = False  # also produce debug views (coarse, heatmap) in FrameOut.views
    latency_window: int = 20000  # latency samples kept for the percentiles
    pipeline: bool | None = None  # back half (decoder, sinks) on a second thread; None: backend.pipeline


class EngineStats:
    """Live counters and timings; :meth:`snapshot` gives a JSON-able summary."""

    def __init__(self, keep: int) -> None:
        self.frames = 0  # frames rendered
        self.dropped = 0  # frames skipped because inference was behind
        self.errors = 0  # frames whose backend step raised
        self.audio_samples = 0  # samples consumed (stream 0): the clock
        self.gap_samples = 0  # samples lost upstream and filled with silence
        self.latency_ms: deque[float] = deque(maxlen=keep)
        self.stage_ms: dict[str, deque[float]] = {
            k: deque(maxlen=600) for k in ("cqt", "step", "sinks", "front", "back")}  # front/back: pipelined
        self._frame_times: deque[float] = deque(maxlen=120)
        self.input_rms = 0.0  # RMS of the latest audio block (stream 0)
        self.device_lost = False
        self.started = time.monotonic()

    def fps(self) -> float:
        t = self._frame_times
        if len(t) < 2:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    def snapshot(self) -> dict:
        lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {
            "frames": self.frames,
            "dropped": self.dropped,
            "errors": self.errors,
            "fps": round(self.fps(), 2),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                           "p99": float(np.percentile(lat, 99)), "n": len(self.latency_ms)},
            "stage_ms": {k: (float(np.median(v)) if v else 0.0) for k, v in self.stage_ms.items()
                         if v or k in ("cqt", "step", "sinks")},
            "audio_seconds": self.audio_samples,  # replaced by Engine.stats_dict with seconds
            "gap_samples": self.gap_samples,
            "input_level_dbfs": round(20 * math.log10(max(self.input_rms, 1e-9)), 1),
            "device_lost": self.device_lost,
            "wall_seconds": round(time.monotonic() - self.started, 3),
        }


class _Stream:
    """Per-stream audio state: the CQT state, recent columns, arrival times."""

    def __init__(self, cqt: StreamingCQT, keep_cols: int) -> None:
        self.cqt = cqt
        self.state = cqt.init_state(1)
        self.keep = keep_cols
        self.cols = torch.zeros(1, cqt.spec.n_bins, 0)
        self.col0 = 0  # absolute index of cols[..., 0]
        self.n_cols = 0  # columns produced so far
        self.pos = 0  # samples consumed (clock)
        self.queue: list[np.ndarray] = []  # samples pushed but not yet through the CQT
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=4096)  # (samples so far, wall time)

    def push(self, x: np.ndarray, start: int, now: float) -> int:
        """Queue samples that begin at clock position ``start``; returns gap samples filled.

        The CQT runs on queued audio only when a frame needs it (:meth:`flush`): one step
        per frame, not one per device read, and the columns are the same either way."""
        gap = max(0, start - self.pos)
        if gap:  # samples lost upstream: keep the clock true with silence
            x = np.concatenate([np.zeros(gap, np.float32), x])
        if len(x) == 0:
            return 0
        self.queue.append(x if gap else x.copy())  # a source may reuse its read buffer
        self.pos += len(x)
        self.arrivals.append((self.pos, now))
        return gap

    def flush(self) -> None:
        """Run the CQT over the queued audio."""
        if not self.queue:
            return
        x = self.queue[0] if len(self.queue) == 1 else np.concatenate(self.queue)
        self.queue.clear()
        new, self.state = self.cqt.step(torch.from_numpy(x)[None], self.state)
        if new.shape[-1]:
            self.cols = torch.cat([self.cols, new], dim=-1)
            self.n_cols += new.shape[-1]
            extra = self.cols.shape[-1] - self.keep
            if extra > 0:
                self.cols = self.cols[..., extra:]
                self.col0 += extra

    def window(self, c: int, width: int) -> torch.Tensor:
        """The ``width`` columns ending at absolute column c, zeros before the start."""
        lo = c - width + 1
        if lo < self.col0 and lo >= 0 and self.col0 > 0:
            raise RuntimeError(f"column {lo} was already discarded (kept from {self.col0})")
        have = self.cols[..., max(lo - self.col0, 0): c - self.col0 + 1]
        if lo < 0:
            have = torch.cat([torch.zeros(1, self.cols.shape[1], -lo), have], dim=-1)
        return have[0]

    def arrival_of(self, n_samples: int, sample_rate: int) -> float | None:
        """Estimated wall time at which sample ``n_samples - 1`` was captured.

        A read drains everything captured since the previous read, so the samples of one
        read arrived between the two reads, at the sample rate, ending at the read:
        ``t_read - (pos_read - n) / sr``, but not before the previous read.
        """
        prev_t = None
        for pos, t in self.arrivals:
            if pos >= n_samples:
                est = t - (pos - n_samples) / sample_rate
                return est if prev_t is None else max(prev_t, est)
            prev_t = t
        return None


def to_uint8_rgb(frame: np.ndarray) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    x = np.clip((frame + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def heatmap_rgb(hm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, h, w] heatmap -> [H, W, 3] uint8 (channels summed, normalised, a warm ramp)."""
    m = hm.sum(0)
    m = m / max(float(m.max()), 1e-6)
    h, w = size
    ys = (np.arange(h) * m.shape[0] // h)
    xs = (np.arange(w) * m.shape[1] // w)
    m = m[ys][:, xs]
    rgb = np.stack([m, m ** 2, m ** 4], axis=-1)
    return (rgb * 255).astype(np.uint8)


class Engine:
    """Runs a backend over one or more audio sources and feeds the sinks."""

    def __init__(self, backend: Backend, audio: AudioSpec, video: VideoSpec,
                 sources: AudioSource | Sequence[AudioSource], sinks: Sequence[Sink] = (),
                 config: EngineConfig | None = None) -> None:
        self.audio = audio
        self.video = video
        self.config = config or EngineConfig()
        self.sources = [sources] if isinstance(sources, AudioSource) else list(sources)
        if not self.sources:
            raise ValueError("Engine needs at least one audio source")
        for s in self.sources:
            if s.sample_rate != audio.sample_rate:
                raise ValueError(f"source {s.name} delivers {s.sample_rate} Hz but the model needs "
                                 f"{audio.sample_rate} Hz")
        self.sinks = list(sinks)  # fanned out through a MultiSink when the engine opens
        self._out = MultiSink([])
        self.stats = EngineStats(self.config.latency_window)
        want = self.config.pipeline
        self.pipelined = bool(getattr(backend, "pipeline", False) if want is None else want)
        self._check_pipeline(backend)
        self._backend = backend
        self._pending_backend: Backend | None = None
        self._cqt = StreamingCQT(audio)
        self._ahead = self._cqt.cqt.ahead
        keep = audio.window_columns + 256
        self._streams = [_Stream(self._cqt, keep) for _ in self.sources]
        self._state = backend.init_state(len(self.sources))
        self._next_frame = 0
        self._stop = threading.Event()
        self._reset = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self.error: BaseException | None = None
        self.on_frame: Callable[[FrameOut], None] | None = None
        self._sink_lock = threading.Lock()  # audio (loop thread) and frames (back thread when pipelined)
        self._handoff: queue.Queue | None = None  # pipelined: fronts waiting for the back thread
        self._slot = threading.Semaphore(1)  # pipelined: held from a front's start until the back takes it
        self._back_thread: threading.Thread | None = None
        log.info("engine: %s, %d stream(s), %s%s", describe(backend), len(self.sources),
                 "live" if self.config.realtime else "render", ", pipelined" if self.pipelined else "")

    # ------------------------------------------------------------------ control
    @property
    def backend(self) -> Backend:
        return self._backend

    def set_backend(self, backend: Backend) -> None:
        """Switch performer/instrument without restarting: takes effect at the next frame,
        with a fresh state (the clock, the audio and the recording go on)."""
        self._check_pipeline(backend)
        self._pending_backend = backend

    def _check_pipeline(self, backend: Backend) -> None:
        if self.pipelined and not pipelined(backend):
            raise ValueError(f"the pipelined engine needs a backend that runs a frame's front and back halves "
                             f"apart ({describe(backend)} does not): open onnxruntime with pipeline=True "
                             f"(--pipeline), or use torch without CUDA graphs")

    def reset(self) -> None:
        """Start the performer over (fresh recurrent state); the clock goes on."""
        self._reset.set()

    def start(self, seconds: float | None = None) -> None:
        """Open the sources and sinks and run the loop on a thread; with ``seconds`` the
        loop ends after exactly that much audio (a recording then lasts that long)."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._open()
        self._thread = threading.Thread(target=self._run_guarded, args=(seconds,), name="letsplay-engine",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end after the frame in progress, without waiting or closing
        anything: safe from any thread, a sink or ``on_frame`` included (e.g. when the
        reader of a pipe went away). :meth:`stop` then finalises the sinks."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and close sources and sinks (recordings are finalised)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a finite source to finish; True when the loop has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, seconds: float | None = None) -> dict:
        """Run on the calling thread until the sources finish, ``stop()`` or ``seconds``
        of audio; returns the statistics. Sources and sinks are closed at the end."""
        self._open()
        try:
            self._loop(seconds)
        finally:
            self._close()
        return self.stats_dict()

    def stats_dict(self) -> dict:
        s = self.stats.snapshot()
        s["audio_seconds"] = round(self.stats.audio_samples / self.audio.sample_rate, 4)
        s["backend"] = describe(self._backend)
        s["streams"] = len(self.sources)
        s["mode"] = "live" if self.config.realtime else "render"
        s["pipelined"] = self.pipelined
        s["lookahead_ms"] = self.video.lookahead_ms
        src = self.sources[0].stats
        s["input"] = dataclasses.asdict(src)
        return s

    # ------------------------------------------------------------------ internals
    def _open(self) -> None:
        if self._opened:
            return
        self._out = MultiSink(self.sinks)  # one failing sink is disabled, the others go on
        self._out.open(self.audio, self.video)
        try:
            for src in self.sources:
                src.start()
        except BaseException:
            self._out.close()
            raise
        self._opened = True
        self.stats.started = time.monotonic()

    def _close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        for src in self.sources:
            try:
                src.stop()
            except Exception as e:  # noqa: BLE001 - closing must not mask the real error
                log.warning("stopping source %s: %s", src.name, e)
        try:
            self._out.close()
        except Exception as e:  # noqa: BLE001
            log.error("closing the sinks: %s", e)

    def _run_guarded(self, seconds: float | None) -> None:
        try:
            self._loop(seconds)
        except BaseException as e:  # noqa: BLE001 - reported to the owner thread
            self.error = e
            log.exception("engine stopped by an error")

    def _loop(self, seconds: float | None) -> None:
        if self.pipelined:
            self._handoff = queue.Queue()  # at most one frame in it: the slot bounds it
            self._slot = threading.Semaphore(1)
            self._back_thread = threading.Thread(target=self._back_loop, name="letsplay-back", daemon=True)
            self._back_thread.start()
        try:
            self._loop_body(seconds)
        finally:
            if self._back_thread is not None:  # every front handed over gets its back half and sinks
                self._handoff.put(None)
                self._back_thread.join()
                self._back_thread = self._handoff = None

    def _loop_body(self, seconds: float | None) -> None:
        limit = None if seconds is None else int(seconds * self.audio.sample_rate)
        while not self._stop.is_set():
            if self._reset.is_set():
                self._reset.clear()
                self._state = self._backend.init_state(len(self.sources))
            if self._pending_backend is not None:
                self._backend, self._pending_backend = self._pending_backend, None
                self._state = self._backend.init_state(len(self.sources))
                log.info("switched to %s", describe(self._backend))
            got = self._read_audio(limit)
            self._render_due()
            if limit is not None and self.stats.audio_samples >= limit:
                break
            if all(s.finished for s in self.sources) and not got:
                break

    def _read_audio(self, limit: int | None) -> bool:
        got = False
        for k, (src, st) in enumerate(zip(self.sources, self._streams, strict=True)):
            x, start = src.read(self.config.read_timeout)
            if k == 0:
                self.stats.device_lost = src.lost
            if limit is not None:  # stop exactly at the asked length
                x = x[: max(0, limit - max(start, st.pos))]
            if len(x) == 0:
                continue
            got = True
            now = time.monotonic()
            if k == 0:
                with self._sink_lock:
                    self._out.write_audio(x, start)
                self.stats.input_rms = float(np.sqrt(np.mean(x * x)))
            gap = st.push(x, start, now)  # queued; the CQT runs when a frame is due
            if k == 0:
                self.stats.gap_samples += gap
                self.stats.audio_samples = st.pos
        return got

    def _due(self) -> int:
        """Frames whose audio is complete in every stream, minus those rendered."""
        n = min(s.pos for s in self._streams)
        return max(0, frames_available(n, self._cqt.cqt, self.video) - self._next_frame)

    def _render_due(self) -> None:
        due = self._due()
        if due == 0:
            return
        if self._handoff is not None and self.config.realtime:
            # Pipelined live: start a front only once the back thread has taken the previous
            # one; until then keep reading audio, and then decide what is stale (below).
            if not self._slot.acquire(blocking=False):
                return
            self._slot.release()  # only this thread acquires: it is still free in _render
            due = self._due()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for st in self._streams:
                st.flush()
        self.stats.stage_ms["cqt"].append((time.perf_counter() - t0) * 1000)
        if self.config.realtime and due > self.config.max_pending:
            skip = due - 1  # render only the newest due frame
            self.stats.dropped += skip
            self._next_frame += skip
            due = 1
        for _ in range(due):
            if self._stop.is_set():  # stopped from a sink (or another thread): compute no more
                return
            self._render(self._next_frame)
            self._next_frame += 1

    def _render(self, i: int) -> None:
        c = frame_column(i, self.audio, self.video)
        W = self.audio.window_columns
        window = torch.stack([s.window(c, W) for s in self._streams]).numpy()  # [B, n_bins, W]
        inputs = feeds({"window": window}, self._state)
        backend = self._backend
        if self._handoff is not None:
            self._slot.acquire()  # render mode: waits for the back thread to take the last frame
        t0 = time.perf_counter()
        try:
            out = backend.front(inputs) if self._handoff is not None else backend.step(inputs)
        except Exception as e:  # noqa: BLE001 - one bad frame must not end a live show
            if self._handoff is not None:
                self._slot.release()
            self._failed(i, e)
            return
        front_ms = (time.perf_counter() - t0) * 1000
        self._state = next_state(out, self._state)
        arrival = self._streams[0].arrival_of(c * self.audio.hop + self._ahead, self.audio.sample_rate)
        if self._handoff is None:
            self._emit(i, out, arrival, front_ms)
            return
        self.stats.stage_ms["front"].append(front_ms)
        self._handoff.put((backend, i, out, arrival, front_ms))

    def _back_loop(self) -> None:
        """Pipelined: the back half and the sinks of each handed-over frame, in order."""
        while (item := self._handoff.get()) is not None:
            self._slot.release()  # the loop thread may start the next front
            backend, i, front, arrival, front_ms = item
            t0 = time.perf_counter()
            try:
                out = backend.back(front)
            except Exception as e:  # noqa: BLE001 - as for the front: count, skip, go on
                self._failed(i, e)
                continue
            back_ms = (time.perf_counter() - t0) * 1000
            self.stats.stage_ms["back"].append(back_ms)
            try:
                self._emit(i, out, arrival, front_ms + back_ms)
            except Exception as e:  # noqa: BLE001 - MultiSink already isolates sinks; on_frame may raise
                log.error("frame %d: %s: %s", i, type(e).__name__, e)

    def _failed(self, i: int, e: Exception) -> None:
        self.stats.errors += 1
        log.error("backend failed on frame %d (%s: %s); frame skipped, stream goes on", i, type(e).__name__, e)

    def _emit(self, i: int, out: dict[str, np.ndarray], arrival: float | None, step_ms: float) -> None:
        """A computed frame -> statistics, sinks and ``on_frame``."""
        t1 = time.perf_counter()
        now = time.monotonic()
        if arrival is not None and self.config.realtime:  # as-fast-as-possible renders have no latency
            self.stats.latency_ms.append((now - arrival) * 1000)
        t = i / self.video.fps
        for b in range(len(self._streams)):
            views = {}
            if self.config.views:
                if "coarse" in out:
                    views["coarse"] = to_uint8_rgb(out["coarse"][b])
                if "heatmap" in out:
                    views["heatmap"] = heatmap_rgb(out["heatmap"][b], out["frame"].shape[-2:])
            kp = out["keypoints"][b] if "keypoints" in out else np.full((67, 2), np.nan, np.float32)
            fo = FrameOut(index=i, time=t, frame=to_uint8_rgb(out["frame"][b]),
                          keypoints=kp.astype(np.float32), stream=b, views=views)
            with self._sink_lock:
                self._out.write_frame(fo)
            if self.on_frame is not None:
                self.on_frame(fo)
        self.stats.frames += 1
        self.stats._frame_times.append(now)
        self.stats.stage_ms["step"].append(step_ms)
        self.stats.stage_ms["sinks"].append((time.perf_counter() - t1) * 1000)
