"""Live soak: a shipped performer rendering a real capture device, recording, for hours.

    python -m benchmarks.soak_live --minutes 120 --performer cello \\
        --json benchmarks/results/soak_live_2h.json --plot docs/img/soak_live_2h.png

What ``letsplay live --record`` does, run for a long time against a real device: a private
PulseAudio server with a null sink is started, music is played into the sink with
``paplay`` (looped), and the engine captures the sink's ``.monitor`` through PortAudio,
in real time, with the backend, pipelining and recording a user gets by default.

Every minute of wall time it records, over that minute:

* ``rss_mb`` -- resident memory of this process (the engine, the backend, the recorder);
* ``frames`` / ``dropped`` / ``errors`` -- frames shown, frames skipped because the
  step was behind the audio (``dropped``), frames whose step raised;
* ``latency_ms`` p50 / p95 / max -- audio captured -> frame out (the engine's measure);
* ``av_offset_ms`` p50 / max -- the audio clock (samples captured) minus the time of the
  frame coming out, taken as it comes out: how far the picture trails the sound it shows,
  as a viewer of the live output sees it (a creeping offset would show here);
* ``loadavg_1m`` -- the machine's load, so other work running beside the soak is seen;
* ``clock_drift_ms`` -- audio clock minus wall clock since the first frame (a device
  whose rate is off, or lost input, shows as a slope).

At the end the recording is read back: its frame count against 30 x its audio length,
and the frame-timestamp gaps (dropped frames leave gaps, never a shift).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from .common import machine, pyplot, write_json
from .pulse import open_live_backend, pulse_for_this_process, stop_pulse
from .soak import rss_mb

log = logging.getLogger(__name__)


class Player:
    """Plays a wav into the null sink with ``paplay``, again and again, until stopped."""

    def __init__(self, wav: Path, env: dict[str, str]) -> None:
        self.wav, self.env, self.loops = wav, env, 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="soak-player", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._proc = subprocess.Popen(["paplay", str(self.wav)], env=self.env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._proc.wait()
            self.loops += 1

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(5)


def _pct(v, qs=(50, 95)) -> dict[str, float]:
    a = np.asarray(list(v) or [0.0], np.float64)
    out = {f"p{q}": round(float(np.percentile(a, q)), 2) for q in qs}
    out["max"] = round(float(a.max()), 2)
    return out


def _write_music(instrument: str, sample_rate: int, folder: Path) -> Path:
    """The built-in demo music of the instrument, as a wav paplay can loop."""
    import soundfile as sf

    from letsplay.realtime.demo import demo_audio

    x = demo_audio(instrument, sample_rate)
    path = folder / f"music-{instrument}.wav"
    sf.write(path, np.stack([x, x], 1), sample_rate, subtype="PCM_16")
    return path


def read_back(mp4: Path, fps: float) -> dict:
    """Frame count, durations and timestamp gaps of a recording."""
    import av

    with av.open(str(mp4)) as c:
        vs = c.streams.video[0]
        pts = [f.pts for f in c.decode(vs)]
        tb = float(vs.time_base)
    with av.open(str(mp4)) as c:
        audio_samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
        sr = c.streams.audio[0].rate
    idx = np.rint(np.asarray(pts, np.float64) * tb * fps).astype(np.int64)
    steps = np.diff(idx) if len(idx) > 1 else np.zeros(0, np.int64)
    audio_s = audio_samples / sr
    return {"frames": len(pts), "audio_seconds": round(audio_s, 3),
            "frames_expected": int(round(audio_s * fps)),  # 30 x the audio length
            "gap_frames": int((steps[steps > 1] - 1).sum()),  # frame slots left empty (drops)
            "out_of_order": int((steps < 1).sum()), "mp4_bytes": mp4.stat().st_size}


def run(minutes: float, performer: str = "cello", out_dir: str | None = None, progress: bool = True,
        interval: float = 60.0) -> dict:
    """Run the live soak for ``minutes`` of wall time, a row of figures every ``interval``
    seconds (a minute by default; the keys say "minute" whatever the interval)."""
    tmp, pulse = pulse_for_this_process("the live soak", out_dir, "soak-live-")
    player = eng = None
    try:
        from letsplay.realtime.backends import describe
        from letsplay.realtime.engine import Engine
        from letsplay.realtime.sinks import Mp4Recorder
        from letsplay.realtime.sources import MicSource

        ref, backend, instrument = open_live_backend(performer)  # what `letsplay live` opens by default
        audio, video = backend.audio, backend.video
        wav = _write_music(instrument, 44100, tmp)
        player = Player(wav, dict(os.environ))
        player.start()
        mp4 = tmp / "soak-live.mp4"
        rec = Mp4Recorder(mp4, partial=True)
        eng = Engine(backend, audio, video, MicSource(audio.sample_rate), [rec])

        offsets: deque[float] = deque()
        first = {"wall": None, "samples": 0}

        def on_frame(f) -> None:
            clock = eng.stats.audio_samples / audio.sample_rate
            offsets.append((clock - f.time) * 1000)
            if first["wall"] is None:
                first["wall"], first["samples"] = time.monotonic(), eng.stats.audio_samples

        eng.on_frame = on_frame
        t0 = time.monotonic()
        eng.start(None)
        per: list[dict] = []
        prev = {"frames": 0, "dropped": 0, "errors": 0, "gap": 0}
        next_mark = t0 + interval
        end = t0 + minutes * 60.0
        interrupted = False
        while eng.running and time.monotonic() < end:
            try:
                time.sleep(min(1.0, max(0.0, next_mark - time.monotonic())))
            except KeyboardInterrupt:  # Ctrl-C: stop here, keep the recording and the minutes so far
                interrupted = True
                break
            if time.monotonic() < next_mark:
                continue
            next_mark += interval
            s = eng.stats
            frames, dropped, errors, gap = s.frames, s.dropped, s.errors, s.gap_samples
            new = frames - prev["frames"]
            lat = list(s.latency_ms)[-new:] if new > 0 else []
            offs = [offsets.popleft() for _ in range(len(offsets))]
            drift = None
            if first["wall"] is not None:
                drift = ((s.audio_samples - first["samples"]) / audio.sample_rate
                         - (time.monotonic() - first["wall"])) * 1000
            row = {"minute": len(per) + 1, "rss_mb": round(rss_mb(), 1), "frames": new,
                   "dropped": dropped - prev["dropped"], "errors": errors - prev["errors"],
                   "gap_samples": gap - prev["gap"], "latency_ms": _pct(lat), "av_offset_ms": _pct(offs),
                   "clock_drift_ms": None if drift is None else round(drift, 1),
                   "input_level_dbfs": round(20 * np.log10(max(s.input_rms, 1e-9)), 1),
                   "device_lost": s.device_lost, "music_loops": player.loops,
                   "loadavg_1m": _loadavg()}  # other work on the machine shows here
            per.append(row)
            prev = {"frames": frames, "dropped": dropped, "errors": errors, "gap": gap}
            if progress:
                print(f"minute {row['minute']}: rss {row['rss_mb']} MiB, {new} frames, dropped {row['dropped']}, "
                      f"latency p95 {row['latency_ms']['p95']} ms, A/V offset p50 {row['av_offset_ms']['p50']} ms",
                      file=sys.stderr, flush=True)
        eng.stop()
        if eng.error is not None:
            raise eng.error
        wall = time.monotonic() - t0
        stats = eng.stats_dict()
        final = rec.kept_partial or rec.path
        back = read_back(final, video.fps) | {"file": final.name} if final.is_file() else {}
        body = per[1:] or per  # the first minute holds start-up (opening the device, warming the backend)
        rss0 = body[0]["rss_mb"] if body else rss_mb()
        drops = [r["dropped"] * 60.0 / interval for r in per]  # per minute, whatever the interval
        return {
            "benchmark": "soak_live", "machine": machine(), "performer": ref.name, "instrument": instrument,
            "backend": describe(backend), "pipelined": eng.pipelined, "lookahead_ms": video.lookahead_ms,
            "minutes": minutes, "interval_s": interval, "wall_seconds": round(wall, 1), "interrupted": interrupted,
            "frames": stats["frames"], "dropped": stats["dropped"], "errors": stats["errors"],
            "gap_samples": stats["gap_samples"], "input": stats["input"],
            "drops_per_minute": _pct(drops, (50, 95)) | {"mean": round(float(np.mean(drops or [0])), 2)},
            "drop_fraction": round(stats["dropped"] / max(stats["frames"] + stats["dropped"], 1), 5),
            "rss_after_first_minute_mb": rss0, "rss_last_mb": per[-1]["rss_mb"] if per else None,
            "rss_peak_mb": max((r["rss_mb"] for r in per), default=None),
            "rss_growth_pct": (round((per[-1]["rss_mb"] - rss0) / rss0 * 100, 2) if per else None),
            "av_offset_ms_max": max((r["av_offset_ms"]["max"] for r in per), default=None),
            "av_offset_ms_p50_first_last": ([per[0]["av_offset_ms"]["p50"], per[-1]["av_offset_ms"]["p50"]]
                                            if per else None),
            "latency_ms_p95_first_last": ([body[0]["latency_ms"]["p95"], body[-1]["latency_ms"]["p95"]]
                                          if body else None),
            "recording": back, "per_minute": per,
        }
    finally:
        if eng is not None:
            eng.stop()  # idempotent; here for errors, so no engine thread outlives the benchmark
        if player is not None:
            player.stop()
        stop_pulse(pulse)


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def plot(result: dict, path: str) -> None:
    plt = pyplot()
    per = result["per_minute"]
    m = [r["minute"] for r in per]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.2))
    ax[0].plot(m, [r["rss_mb"] for r in per])
    ax[0].set(xlabel="minute", ylabel="MiB", title="resident memory")
    ax[1].plot(m, [r["av_offset_ms"]["p50"] for r in per], label="p50")
    ax[1].plot(m, [r["av_offset_ms"]["max"] for r in per], ":", label="max")
    ax[1].set(xlabel="minute", ylabel="ms", title="A/V offset (audio clock - newest frame)")
    ax[1].legend(fontsize=7)
    ax[2].bar(m, [r["dropped"] for r in per], width=1.0)
    ax[2].set(xlabel="minute", ylabel="frames", title="dropped frames per minute")
    ax[3].plot(m, [r["latency_ms"]["p50"] for r in per], label="p50")
    ax[3].plot(m, [r["latency_ms"]["p95"] for r in per], label="p95")
    ax[3].set(xlabel="minute", ylabel="ms", title="latency, audio in -> frame out")
    ax[3].legend(fontsize=7)
    fig.suptitle(f"live soak: {result['performer']}, {result['backend']}, {result['minutes']:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall minutes to run (default 10)")
    ap.add_argument("--performer", default="cello", help="a shipped performer or a checkpoint (default cello)")
    ap.add_argument("--out", default=None, help="folder for the recording and the server (default: a temp folder)")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per row of figures (default 60)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of memory, A/V offset, drops and latency per minute")
    args = ap.parse_args(argv)
    if not args.minutes > 0:
        ap.error(f"--minutes must be > 0, got {args.minutes}")
    if not args.interval > 0:
        ap.error(f"--interval must be > 0, got {args.interval}")
    r = run(args.minutes, args.performer, args.out, interval=args.interval)
    print(write_json(r, args.json))
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
