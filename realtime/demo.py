"""The built-in demo music: a real score from the music21 corpus (a string-quartet cello
line, or a Bach chorale bass for trombone), played by the General MIDI soundfont that
ships with the install -- no files, no download.

Rendering takes a few seconds, so the audio is cached (by instrument, sample rate and
length) in the letsplay cache folder.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def demo_audio(instrument: str, sample_rate: int, seconds: float | None = None) -> np.ndarray:
    """Mono float32 demo music for ``instrument`` (cello or trombone)."""
    from letsplay.realtime.performers import cache_dir

    path = cache_dir() / "demo" / f"{instrument}-{sample_rate}-{seconds or 'full'}-v{CACHE_VERSION}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("demo cache %s is unreadable; rendering again", path)
    x = _render(instrument, sample_rate)
    if seconds is not None:
        x = x[: int(seconds * sample_rate)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return x


def demo_score(instrument: str):
    """The demo's score: the first corpus piece listed for the instrument."""
    from letsplay.models.data.scores import CORPUS_PIECES, corpus_score

    if instrument not in CORPUS_PIECES:
        raise ValueError(f"no demo for {instrument!r}; choose one of {sorted(CORPUS_PIECES)}")
    return corpus_score(CORPUS_PIECES[instrument][0], instrument)


def _render(instrument: str, sample_rate: int) -> np.ndarray:
    from letsplay.models.data.instruments import get_instrument
    from letsplay.models.data.synth_audio import render_notes

    score = demo_score(instrument)
    duration = max(n.end for n in score.notes) + 1.0
    log.info("rendering the demo (%s, %s, %.0f s)", instrument, score.source, duration)
    return render_notes(score.notes, get_instrument(instrument), duration, sample_rate)
