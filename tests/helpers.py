"""Helpers shared by the tests (imported as ``helpers``; fixtures stay in conftest.py):
test signals, a tiny synthetic dataset, frames and audio for the sinks, the offline
Performer run and a random-chunk source for the engine."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from letsplay.models.features import CQT, frame_windows, frames_available
from letsplay.models.performer import Performer
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.sinks import FrameOut, fps_fraction
from letsplay.realtime.sources import ArraySource


def music_signal(seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    """A music-like test signal: a sequence of harmonic notes (5 partials, decaying
    envelopes, sharp onsets) over the CQT range, plus a little noise. float32 [N]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = np.zeros(n)
    onset = 0.0
    while onset < seconds:
        dur = rng.uniform(0.08, 0.4)
        f0 = 32.70 * 2 ** (rng.integers(0, 60) / 12)
        on = (t >= onset) & (t < onset + dur * 1.5)
        env = np.where(on, np.exp(-(t - onset).clip(0) * rng.uniform(1, 6)), 0.0)
        env *= np.clip((t - onset) * sr / 32, 0, 1)  # ~0.7 ms attack
        for h in range(1, 6):
            if f0 * h < sr / 2:
                x += env * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) * 0.3 / h
        onset += dur
    x += rng.standard_normal(n) * 1e-3
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


def synth_tiny(root, instrument: str, minutes: float, clip_seconds: float, min_clip_seconds: float, **kw):
    """A small synthetic dataset (one identity, JPEG frames) at ``root``; returns ``root``.
    ``kw``: other SynthDatasetConfig fields (e.g. ``soundfont``)."""
    from letsplay.models.data.synth_dataset import SynthDatasetConfig, synthesize_dataset

    synthesize_dataset(root, SynthDatasetConfig(instrument=instrument, minutes=minutes, clip_seconds=clip_seconds,
                                                identities=1, frames="jpeg", min_clip_seconds=min_clip_seconds,
                                                **kw),
                       workers=1)
    return root



# --------------------------------------------------------------------------- sinks

SR = 44100
AUDIO = AudioSpec()
SQUARE = (230, 40, 60)  # the moving square's colour
BACKGROUND = (20, 90, 200)


def square_frame(i: int, h: int, w: int) -> np.ndarray:
    """Flat background with a coloured square moving right by 2 px per frame."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    s = h // 4
    x0 = (2 * i) % (w - s)
    img[h // 3:h // 3 + s, x0:x0 + s] = SQUARE
    return img


def keypoints(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.random((67, 2), dtype=np.float32)


def frame_out(i: int, video: VideoSpec, stream: int = 0) -> FrameOut:
    return FrameOut(index=i, time=float(i / fps_fraction(video.fps)), frame=square_frame(i, video.height, video.width),
                    keypoints=keypoints(i), stream=stream)


def sine(start: int, n: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(start, start + n) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def decode_video_times(path: Path) -> list[Fraction]:
    import av  # here, not at the top: a GPU machine without PyAV still runs the GPU tests

    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(video=0)]



# --------------------------------------------------------------------------- engine



def offline_frames(p: Performer, x: np.ndarray):
    cfg = p.cfg
    cqt = CQT(cfg.audio)
    with torch.inference_mode():
        cols = cqt(torch.from_numpy(x))
        n = frames_available(len(x), cqt, cfg.video)
        win = frame_windows(cols, cfg.audio, cfg.video, n)  # [n, 84, 87]
        out, _ = p(win[None])
    return out.frame[0].numpy(), out.keypoints[0].numpy()


class RandomChunks(ArraySource):
    """An ArraySource that hands out random-sized chunks (1 .. 3000 samples)."""

    def __init__(self, x, seed=0):
        super().__init__(x, SR)
        self._rng = np.random.default_rng(seed)

    def read(self, timeout=0.05):
        self.block = int(self._rng.integers(1, 3000))
        return super().read(timeout)


