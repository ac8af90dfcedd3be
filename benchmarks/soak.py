"""Soak: many minutes of audio through the engine (faster than real time), recording an mp4.

    python -m benchmarks.soak --minutes 10 --json benchmarks/results/soak_10min.json [--plot soak.png]
    python -m benchmarks.soak --minutes 120 --preset tiny --json benchmarks/results/soak_2h.json
    python -m benchmarks.soak --minutes 30 --pipeline --json benchmarks/results/soak_30min_pipelined.json

Every minute of audio it records resident memory (RSS), latency and the A/V offset
(audio clock time minus the newest frame's time, which must stay below one frame), and
at the end it reads the recording back: video and audio durations must agree within
one frame. Memory must stay flat after the first minute, latency must not creep up.

**Latency in a soak.** The soak renders faster than real time (render mode), where the
engine records no audio-to-frame latency: there is no capture clock, the next block is
always ready. What a long run can still show is whether the pipeline slows down, so
each minute records, over that minute's frames:

* ``step_ms`` p50 / p95 / max -- the backend step alone (timed around it);
* ``pipeline_ms`` p50 / p95 / max -- the engine's latency measured the engine's way
  (the wall time the source handed over the block that completed the frame's window
  -> the frame reaching the sinks): CQT + waiting behind the same block's earlier
  frames + the step. A live run adds the capture block on top of it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from .common import machine, pyplot, write_json


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SyntheticMusic:
    """An endless, varied music-like signal generated block by block (nothing held)."""

    def __init__(self, sr: int, seed: int = 0) -> None:
        self.sr, self.rng, self.t = sr, np.random.default_rng(seed), 0
        self._note_end, self._f, self._amp = 0, 220.0, 0.3

    def block(self, n: int) -> np.ndarray:
        out = np.empty(n, np.float32)
        i = 0
        while i < n:
            if self.t >= self._note_end:
                self._note_end = self.t + int(self.sr * self.rng.uniform(0.1, 0.5))
                self._f = 55.0 * 2 ** (self.rng.integers(0, 40) / 12)
                self._amp = float(self.rng.uniform(0.1, 0.4))
            k = min(n - i, self._note_end - self.t)
            tt = (self.t + np.arange(k)) / self.sr
            out[i: i + k] = self._amp * (np.sin(2 * np.pi * self._f * tt) + 0.3 * np.sin(4 * np.pi * self._f * tt))
            self.t += k
            i += k
        return out


def run(minutes: float, preset: str = "tiny", backend: str = "torch", record: bool = True,
        out_dir: str | None = None, progress: bool = True, pipeline: bool = False) -> dict:
    import torch

    from letsplay.models.features import CQT, frame_column
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset as make_preset
    from letsplay.realtime.backends import TorchBackend
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sinks import Mp4Recorder
    from letsplay.realtime.sources import AudioSource

    torch.manual_seed(0)
    perf = Performer(make_preset(preset)).eval()
    audio, video = perf.cfg.audio, perf.cfg.video
    total = int(minutes * 60 * audio.sample_rate)
    ahead = CQT(audio).ahead  # samples past a column's time its kernels read (0 when causal)
    reads: deque[tuple[int, float]] = deque()  # (samples handed over so far, wall time), recent reads

    class Endless(AudioSource):
        name = "synthetic"

        def __init__(self) -> None:
            super().__init__()
            self.sample_rate, self.music, self.pos = audio.sample_rate, SyntheticMusic(audio.sample_rate), 0

        @property
        def finished(self) -> bool:
            return self.pos >= total

        def read(self, timeout: float = 0.05):
            n = min(4096, total - self.pos)
            x, start = self.music.block(n), self.pos
            self.pos += n
            reads.append((self.pos, time.monotonic()))
            return x, start

    class Timed:
        """The backend, with each step timed (pipelined: front + back of the same frame)."""

        def __init__(self, inner) -> None:
            self.inner, self.name, self.device = inner, inner.name, inner.device
            self.state_names = inner.state_names
            self.pipeline = getattr(inner, "pipeline", False)
            self.can_pipeline = getattr(inner, "can_pipeline", False)
            self.last_ms = 0.0
            self._fronts: deque[float] = deque()  # front times of frames not yet through back

        def front(self, feeds):
            t = time.perf_counter()
            out = self.inner.front(feeds)
            self._fronts.append((time.perf_counter() - t) * 1000)
            return out

        def back(self, front):
            t = time.perf_counter()
            out = self.inner.back(front)
            self.last_ms = self._fronts.popleft() + (time.perf_counter() - t) * 1000
            return out

        def init_state(self, batch: int = 1):
            return self.inner.init_state(batch)

        def step(self, feeds):
            t = time.perf_counter()
            out = self.inner.step(feeds)
            self.last_ms = (time.perf_counter() - t) * 1000
            return out

    be = TorchBackend(perf, pipeline=pipeline)
    if backend == "onnxruntime":
        from letsplay.export.onnx import export_onnx
        from letsplay.realtime.backends import OrtBackend

        d = Path(tempfile.mkdtemp(prefix="soak-onnx-"))
        export_onnx(perf, d, stages=False, cqt=False, pipeline=pipeline)
        be = OrtBackend(d, pipeline=True) if pipeline else OrtBackend(d, threads=2)
    be = Timed(be)
    tmp = Path(out_dir or tempfile.mkdtemp(prefix="soak-"))
    mp4 = tmp / "soak.mp4"
    sinks = [Mp4Recorder(mp4)] if record else []
    eng = Engine(be, audio, video, Endless(), sinks, EngineConfig(realtime=False))
    samples: list[dict] = []
    t0 = time.monotonic()
    mark = {"next": 60.0}

    minute: dict[str, list[float]] = {"step": [], "pipeline": []}  # this minute's frames

    def pct(v: list[float]) -> dict[str, float]:
        a = np.asarray(v or [0.0])
        return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
                "max": round(float(a.max()), 3)}

    def on_frame(f) -> None:  # every frame: latency; every minute of video: memory, latency, A/V offset
        now = time.monotonic()
        need = frame_column(f.index, audio, video) * audio.hop + ahead  # samples the frame's window needs
        while len(reads) > 1 and reads[0][0] < need:
            reads.popleft()
        if reads and reads[0][0] >= need:
            minute["pipeline"].append((now - reads[0][1]) * 1000)
        minute["step"].append(be.last_ms)
        shown_until = (f.index + 1) / video.fps  # the frame covers [time, time + 1/fps)
        if shown_until + 1e-9 < mark["next"]:
            return
        mark["next"] += 60.0
        clock_s = eng.stats.audio_samples / audio.sample_rate
        samples.append({"audio_minutes": round(shown_until / 60, 3), "rss_mb": round(rss_mb(), 1),
                        "wall_s": round(time.monotonic() - t0, 1), "frames": len(minute["step"]),
                        "step_ms": pct(minute["step"]), "pipeline_ms": pct(minute["pipeline"]),
                        "step_ms_median": pct(minute["step"])["p50"],
                        # audio clock minus the newest frame's time: < 1 frame + one read block
                        "av_offset_ms": round((clock_s - f.time) * 1000, 3)})
        minute["step"].clear()
        minute["pipeline"].clear()
        if progress:
            print(f"{samples[-1]}", file=sys.stderr)

    eng.on_frame = on_frame
    eng.run()
    wall = time.monotonic() - t0
    rec = {}
    if record:
        import av

        with av.open(str(mp4)) as c:
            n_frames = sum(1 for _ in c.decode(c.streams.video[0]))
        with av.open(str(mp4)) as c:
            n_audio = sum(f.samples for f in c.decode(c.streams.audio[0]))
        rec = {"video_seconds": n_frames / video.fps, "audio_seconds": n_audio / audio.sample_rate,
               "frames": n_frames, "mp4_bytes": mp4.stat().st_size}
        rec["av_duration_diff_ms"] = round((rec["audio_seconds"] - rec["video_seconds"]) * 1000, 2)
    base = samples[0]["rss_mb"] if samples else rss_mb()
    peak = max((s["rss_mb"] for s in samples), default=base)
    return {
        "benchmark": "soak", "machine": machine(), "preset": preset, "backend": eng.backend.name,
        "pipelined": eng.pipelined,
        "audio_minutes": minutes, "wall_seconds": round(wall, 1), "speed_x_realtime": round(minutes * 60 / wall, 2),
        "frames": eng.stats.frames, "dropped": eng.stats.dropped, "errors": eng.stats.errors,
        "rss_first_minute_mb": base, "rss_peak_mb": peak,
        "rss_growth_pct": round((peak - base) / base * 100, 2),
        "max_av_offset_ms": max((abs(s["av_offset_ms"]) for s in samples), default=0.0),
        # latency creep: the last minute's p95 over the first minute's (1.0 = flat)
        "pipeline_p95_last_over_first": (round(samples[-1]["pipeline_ms"]["p95"]
                                               / max(samples[0]["pipeline_ms"]["p95"], 1e-9), 3)
                                         if samples else None),
        "recording": rec, "per_minute": samples, "mp4": str(mp4) if record else None,
    }


def plot(result: dict, path: str) -> None:
    plt = pyplot()
    per = result["per_minute"]
    m = [s["audio_minutes"] for s in per]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3))
    ax[0].plot(m, [s["rss_mb"] for s in per])
    ax[0].set(xlabel="audio minutes", ylabel="RSS MiB", title="memory")
    for key, style in (("pipeline_ms", "-"), ("step_ms", "--")):
        for q in ("p50", "p95"):
            ax[1].plot(m, [s[key][q] for s in per], style, label=f"{key.split('_')[0]} {q}")
    ax[1].set(xlabel="audio minutes", ylabel="ms", title="latency per minute")
    ax[1].legend(fontsize=7)
    ax[2].plot(m, [s["av_offset_ms"] for s in per])
    ax[2].set(xlabel="audio minutes", ylabel="ms", title="A/V offset")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--pipeline", action="store_true", help="the engine's pipelined mode (front/back on two threads)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of memory, latency and A/V offset per minute (matplotlib)")
    args = ap.parse_args(argv)
    r = run(args.minutes, args.preset, args.backend, record=not args.no_record, pipeline=args.pipeline)
    print(write_json(r, args.json))
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
