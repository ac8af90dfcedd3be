"""Shared test set-up. Qt must never try a real display in tests: without this,
Qt aborts the whole process on a machine with no screen."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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


@pytest.fixture(scope="session")
def music() -> np.ndarray:
    return music_signal(3.0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (restored after): on a small machine shared with an
    engine thread, a UI or other jobs, torch's thread pool (OpenMP spinning) makes the tiny
    model's steps and the CQT many times slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def performer():
    """A randomly initialised ``tiny`` Performer (seed 0), in eval mode."""
    import torch

    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset

    torch.manual_seed(0)
    return Performer(preset("tiny")).eval()


@pytest.fixture(scope="module")
def tiny_ckpt(performer, tmp_path_factory):
    """The ``performer`` fixture saved as a checkpoint file."""
    p = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    performer.save(p)
    return p


def synth_tiny(root, instrument: str, minutes: float, clip_seconds: float, min_clip_seconds: float):
    """A small synthetic dataset (one identity, JPEG frames) at ``root``; returns ``root``."""
    from letsplay.models.data.synth_dataset import SynthDatasetConfig, synthesize_dataset

    synthesize_dataset(root, SynthDatasetConfig(instrument=instrument, minutes=minutes, clip_seconds=clip_seconds,
                                                identities=1, frames="jpeg", min_clip_seconds=min_clip_seconds),
                       workers=1)
    return root


@pytest.fixture(scope="session")
def trombone_set(tmp_path_factory):
    """Four 1.5 s trombone clips (45 frames each: enough for 4 lanes of 3-frame chunks)."""
    return synth_tiny(tmp_path_factory.mktemp("tiny-set") / "trombone", "trombone", 0.1, 1.5, 1.0)
