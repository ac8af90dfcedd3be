"""Soundfont audio: the pitch heard is the pitch written, vibrato included."""

from __future__ import annotations

import numpy as np
import pytest

from letsplay.models.data.expression import Vibrato, vibrato_semitones
from letsplay.models.data.instruments import INSTRUMENTS
from letsplay.models.data.performer_motion import cello_vibrato_allowed
from letsplay.models.data.scores import Note
from letsplay.models.data.synth_audio import (
    SynthConfig,
    add_reverb,
    fluidsynth_available,
    render_notes,
    resolve_backend,
)

SR = 44100


def yin_f0(x: np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 1000.0, threshold: float = 0.15) -> float:
    """YIN fundamental frequency of one frame (de Cheveigne & Kawahara 2002)."""
    x = x.astype(np.float64) - x.mean()
    tau_max = int(sr / fmin)
    w = len(x) - tau_max
    # difference function d(tau) = sum (x[j] - x[j + tau])^2 over a window of w samples
    energy = np.concatenate([[0.0], np.cumsum(x**2)])
    n = 1 << (len(x) + w).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(x[:w], n)), n)[: tau_max + 1]
    taus = np.arange(tau_max + 1)
    d = energy[w] + (energy[taus + w] - energy[taus]) - 2 * corr
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * taus[1:] / np.maximum(np.cumsum(d[1:]), 1e-12)
    lo = int(sr / fmax)
    cand = np.flatnonzero(cmnd[lo:] < threshold)
    tau = lo + (cand[0] if len(cand) else int(np.argmin(cmnd[lo:])))
    while tau + 1 <= tau_max and cmnd[tau + 1] < cmnd[tau]:
        tau += 1
    if 1 <= tau < tau_max:  # parabolic interpolation
        a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        tau = tau + 0.5 * (a - c) / max(a - 2 * b + c, 1e-12)
    return sr / tau


def _check_pitches(audio: np.ndarray, notes: list[Note], tol: float = 0.4) -> None:
    for n in notes:
        a = int((n.onset + 0.12) * SR)  # past the attack
        f0 = yin_f0(audio[a: a + int(0.09 * SR)], SR)
        want = 440.0 * 2 ** ((n.pitch - 69) / 12)
        err = 12 * np.log2(f0 / want)
        assert abs(err) < tol, f"pitch {n.pitch}: heard {f0:.1f} Hz, want {want:.1f} Hz ({err:+.2f} semitones)"


@pytest.mark.parametrize("instrument,pitches", [("cello", [36, 43, 48, 55, 62, 69, 76]),
                                                ("trombone", [40, 46, 53, 58, 62, 65, 70])])
def test_tinysoundfont_pitch_matches_score(instrument: str, pitches: list[int]) -> None:
    notes = [Note(0.05 + 0.5 * i, 0.42, p, 90) for i, p in enumerate(pitches)]
    audio = render_notes(notes, INSTRUMENTS[instrument], notes[-1].end + 0.2, SR,
                         SynthConfig(backend="tinysoundfont", reverb_wet=0.0))
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == round((notes[-1].end + 0.2) * SR)
    assert 0.01 < np.abs(audio).max() <= 1.0
    _check_pitches(audio, notes)


def test_vibrato_is_heard_as_pitch_bend() -> None:
    vib = Vibrato(depth=0.5, rate=5.0, delay=0.1, ramp=0.01, min_duration=0.3)
    notes = [Note(0.0, 2.0, 57, 90)]
    audio = render_notes(notes, INSTRUMENTS["cello"], 2.0, SR, SynthConfig(backend="tinysoundfont", reverb_wet=0.0),
                         vibrato=vib)
    times = np.arange(0.3, 1.8, 0.025)
    heard = np.array([yin_f0(audio[int(t * SR): int(t * SR) + 2048], SR) for t in times])
    semis = 12 * np.log2(heard / 220.0)
    bend = vibrato_semitones(notes, times + 1024 / SR, vib)
    assert np.ptp(semis) > 0.6  # the pitch swings about +-0.5 semitones ...
    assert np.corrcoef(semis, bend)[0, 1] > 0.8  # ... in step with the vibrato the picture shows


def test_open_strings_get_no_vibrato() -> None:
    notes = [Note(0.0, 1.0, 57, 80), Note(1.0, 1.0, 59, 80)]  # open A string, then B on it
    allowed = cello_vibrato_allowed(notes)
    assert list(allowed) == [False, True]
    t = np.linspace(0, 2, 400, endpoint=False)
    v = vibrato_semitones(notes, t, Vibrato(), allowed)
    assert np.all(v[t < 1.0] == 0) and np.abs(v[t >= 1.0]).max() > 0.1


def test_velocity_makes_it_louder_and_reverb_adds_a_tail() -> None:
    cfg = SynthConfig(backend="tinysoundfont", reverb_wet=0.0)
    soft = render_notes([Note(0.0, 0.5, 48, 40)], INSTRUMENTS["cello"], 1.0, SR, cfg)
    loud = render_notes([Note(0.0, 0.5, 48, 115)], INSTRUMENTS["cello"], 1.0, SR, cfg)
    assert np.sqrt(np.mean(loud**2)) > 1.5 * np.sqrt(np.mean(soft**2))
    dry = np.zeros(SR, np.float32)
    dry[1000] = 1.0
    wet = add_reverb(dry, SR, 0.3, (0.5, 0.5), seed=1)
    assert np.abs(wet[SR // 4:]).max() > 1e-4 and np.abs(wet[:1000]).max() < 1e-6  # causal, with a tail
    assert np.array_equal(wet, add_reverb(dry, SR, 0.3, (0.5, 0.5), seed=1))


def test_backend_resolution() -> None:
    assert resolve_backend("tinysoundfont") == "tinysoundfont"
    assert resolve_backend("auto") == ("fluidsynth" if fluidsynth_available() else "tinysoundfont")
    with pytest.raises(ValueError):
        resolve_backend("nope")
    if not fluidsynth_available():
        with pytest.raises(RuntimeError, match="fluid-soundfont-gm"):
            resolve_backend("fluidsynth")


@pytest.mark.skipif(not fluidsynth_available(), reason="fluidsynth program or FluidR3_GM.sf2 not installed")
def test_a_sliver_of_a_note_at_the_cut_neither_hangs_nor_sounds() -> None:
    """A clip's cut can leave a note of a few nanoseconds at its end. Its MIDI note-off
    lands on its note-on's tick and sorts first, so the note would be held for ever and
    FluidSynth's file renderer would write WAV without end (28 GB in 9 minutes, seen). It
    is not played: the render ends, as long as asked, silent after the last real note."""
    notes = [Note(0.0, 0.4, 48, 90), Note(1.0 - 1e-9, 1e-9, 50, 118)]
    for backend in ("fluidsynth", "tinysoundfont"):
        audio = render_notes(notes, INSTRUMENTS["cello"], 1.0, SR, SynthConfig(backend=backend, reverb_wet=0.0))
        assert audio.shape == (SR,)
        assert np.abs(audio[: SR // 4]).max() > 0.05  # the real note sounds
        assert np.abs(audio[-SR // 10:]).max() < 1e-3  # nothing after its release


@pytest.mark.skipif(not fluidsynth_available(), reason="fluidsynth program or FluidR3_GM.sf2 not installed")
def test_fluidsynth_pitch_matches_score() -> None:
    notes = [Note(0.05 + 0.5 * i, 0.42, p, 90) for i, p in enumerate([36, 45, 52, 60, 67])]
    audio = render_notes(notes, INSTRUMENTS["cello"], notes[-1].end + 0.2, SR,
                         SynthConfig(backend="fluidsynth", reverb_wet=0.0))
    assert audio.dtype == np.float32 and np.abs(audio).max() > 0.01
    _check_pitches(audio, notes)
