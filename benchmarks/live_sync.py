"""Sync of a live performer, through a real capture device.

    python -m benchmarks.live_sync --performer cello --data data/cello30 [--seconds 10] [--json out.json]

The held-out clips' audio (the first ``--seconds`` of each, a second of silence between
them) is played once into a private PulseAudio null sink with ``paplay``; the engine
captures the sink's ``.monitor`` through PortAudio, as ``letsplay live --device pulse``
does, at the performer's own lookahead, its states carried from clip to clip. The
captured audio is aligned with what was played by cross-correlation, each clip's note
onsets are put on the engine's clock, and the right wrist's motion events in the live
keypoints are scored against them (:mod:`letsplay.models.sync`) beside chance and the
clips' real motion. Frames the engine dropped are filled with the frame before.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from .common import machine, write_json
from .pulse import open_live_backend, pulse_for_this_process, stop_pulse


def _playlist(clips: list, seconds: float, sr: int, gap: float = 1.0) -> tuple[np.ndarray, list[int]]:
    """The clips' first ``seconds`` of audio, ``gap`` seconds of silence before each; and
    the sample each clip starts at."""
    import soundfile as sf

    parts, starts, pos = [], [], 0
    for clip in clips:
        x, rate = sf.read(str(clip.files.audio), dtype="float32", always_2d=True)
        if rate != sr:
            raise ValueError(f"{clip.files.audio}: {rate} Hz, the performer hears {sr} Hz")
        x = x.mean(1)[: int(seconds * sr)]
        parts += [np.zeros(int(gap * sr), np.float32), x]
        starts.append(pos + int(gap * sr))
        pos += int(gap * sr) + len(x)
    parts.append(np.zeros(int(gap * sr), np.float32))
    return np.concatenate(parts), starts


def _offset(captured: np.ndarray, played: np.ndarray) -> tuple[int, float]:
    """Where ``played`` starts in ``captured`` (samples), by FFT cross-correlation; and
    the peak's height over the correlation's median absolute value."""
    n = 1 << int(np.ceil(np.log2(len(captured) + len(played))))
    xc = np.fft.irfft(np.fft.rfft(captured, n) * np.conj(np.fft.rfft(played, n)), n)[: len(captured)]
    k = int(np.argmax(xc))
    return k, float(xc[k] / max(np.median(np.abs(xc)), 1e-12))


def run(performer: str, data: str, seconds: float = 10.0, out_dir: str | None = None, split: str = "test") -> dict:
    tmp, pulse = pulse_for_this_process("live sync", out_dir, "live-sync-")
    eng = None
    try:
        import soundfile as sf

        from letsplay.models.evaluate import held_out_clips
        from letsplay.models.sync import motion_events, onset_frames, pool_sync, sync_counts
        from letsplay.realtime.backends import describe
        from letsplay.realtime.engine import Engine
        from letsplay.realtime.sinks import CallbackSink
        from letsplay.realtime.sources import MicSource

        ref, backend, instrument = open_live_backend(performer)  # what `letsplay live` opens by default
        audio, video = backend.audio, backend.video
        clips = held_out_clips(data, split, instrument)
        played, starts = _playlist(clips, seconds, audio.sample_rate)
        wav = tmp / "held_out.wav"
        sf.write(wav, played, audio.sample_rate, subtype="FLOAT")

        kps: dict[int, np.ndarray] = {}
        blocks: list[tuple[int, np.ndarray]] = []
        sink = CallbackSink(lambda f: kps.__setitem__(f.index, f.keypoints.copy()),
                            on_audio=lambda x, start: blocks.append((start, np.array(x, np.float32))))
        eng = Engine(backend, audio, video, MicSource(audio.sample_rate), [sink])
        eng.start(None)
        deadline = time.monotonic() + 60
        while eng.stats.frames < 30:  # the device is open and frames flow before the music starts
            if not eng.running or time.monotonic() > deadline:
                raise RuntimeError(f"the live engine produced no frames from the capture device: {eng.error}")
            time.sleep(0.1)
        subprocess.run(["paplay", str(wav)], env=dict(os.environ), check=True)
        time.sleep(1.0 + video.lookahead_ms / 1000)
        eng.stop()
        if eng.error is not None:
            raise eng.error
        stats = eng.stats_dict()
    finally:
        if eng is not None:
            eng.stop()
        stop_pulse(pulse)

    end = max(s + len(x) for s, x in blocks)
    captured = np.zeros(end, np.float32)
    for s, x in blocks:
        captured[s:s + len(x)] = x
    at, peak = _offset(captured, played)
    fps, sr = video.fps, audio.sample_rate
    n_frames = max(kps) + 1
    live = np.zeros((n_frames, 67, 2), np.float32)
    have = np.zeros(n_frames, bool)
    for i, k in kps.items():
        live[i], have[i] = k, True
    for i in range(1, n_frames):  # a dropped frame shows the one before it
        if not have[i]:
            live[i] = live[i - 1]
    counts, real_counts = [], []
    per_clip = []
    for ci, (clip, start) in enumerate(zip(clips, starts, strict=True)):
        first = int(round((at + start) / sr * fps))
        n = int(seconds * fps)
        if first < 0 or first + n > n_frames:
            raise RuntimeError(f"clip {clip.id} falls outside the live frames ({first}..{first + n} of {n_frames})")
        on = onset_frames(clip.notes(), fps, n)
        kp = live[first:first + n]
        c = sync_counts(motion_events(kp, instrument), on, n, seed=ci)
        counts.append(c)
        real = np.load(clip.files.keypoints)["keypoints"][:n]
        real_counts.append(sync_counts(motion_events(real, instrument), on, len(real), seed=ci))
        sc = pool_sync([c])
        per_clip.append({"clip": clip.id, "first_frame": first, "sync_c": None if sc is None else round(sc.c, 4)})
    model, truth = pool_sync(counts), pool_sync(real_counts)
    return {
        "benchmark": "live_sync", "machine": machine(), "performer": ref.name, "instrument": instrument,
        "backend": describe(backend), "lookahead_ms": video.lookahead_ms, "data": str(data),
        "split": split, "clips": len(clips), "seconds_per_clip": seconds,
        "frames": stats["frames"], "dropped": stats["dropped"],
        "alignment": {"offset_samples": at, "peak_over_median": round(peak, 1)},
        "sync": {"c": round(model.c, 4), "best_lag": model.best_lag, "f1": round(model.f1, 4),
                 "chance": round(model.chance, 4), "events": model.events, "onsets": model.onsets},
        "real_motion_sync": {"c": round(truth.c, 4), "best_lag": truth.best_lag},
        "per_clip": per_clip,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--performer", default="cello")
    ap.add_argument("--data", required=True, help="dataset with a held-out test split (notes.json per clip)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of each clip (default 10)")
    ap.add_argument("--split", default="test", help="the dataset's split to play (default test)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    r = run(args.performer, args.data, args.seconds, split=args.split)
    s = r["sync"]
    print(f"{r['performer']} live through PulseAudio, {r['clips']} clips x {r['seconds_per_clip']:g} s, "
          f"lookahead {r['lookahead_ms']:g} ms: sync C {s['c']:.3f} at lag {s['best_lag']:+d} "
          f"(chance-corrected; real motion {r['real_motion_sync']['c']:.3f}), {s['events']} events / "
          f"{s['onsets']} onsets, {r['dropped']} of {r['frames']} frames dropped, alignment peak "
          f"{r['alignment']['peak_over_median']:g}x the median", file=sys.stderr)
    if args.json:
        print(write_json(r, args.json), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
