"""Audio for a note list, from a General MIDI soundfont.

Two backends, both real sample-based synthesis from a GM soundfont:

* ``tinysoundfont`` (pip only, the default where nothing else is installed): the
  TinySoundFont binding renders in-process from ``TimGM6mb.sf2``, the small GM
  soundfont that ships inside the ``pretty_midi`` wheel;
* ``fluidsynth``: the ``fluidsynth`` program with ``FluidR3_GM.sf2`` (Debian's
  ``fluidsynth`` and ``fluid-soundfont-gm`` packages), a larger, richer soundfont.

``auto`` takes fluidsynth when both the program and the soundfont are present.
Programs are 0-based General MIDI numbers (:class:`Instrument.gm_program`: 42 cello,
57 trombone). Vibrato becomes pitch-wheel motion (bend range +-2 semitones), updated
every :data:`BEND_STEP` samples. Each backend's built-in reverb and chorus stay off; a
seeded room reverb of our own (exponentially decaying noise, a "room" per performer)
is added instead, so both backends sound in the same rooms. Output: mono float32 at
the requested sample rate.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letsplay.models.data.expression import NO_VIBRATO, Vibrato, vibrato_semitones
from letsplay.models.data.instruments import Instrument
from letsplay.models.data.scores import Note

log = logging.getLogger(__name__)

FLUID_R3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
BEND_STEP = 441  # samples between pitch-wheel updates while a note has vibrato (10 ms)
BEND_RANGE = 2.0  # semitones, the GM default
# Output gain per backend, so a forte note has about the same level on either.
_GAIN = {"tinysoundfont": 1.2, "fluidsynth": 3.3}
FLUIDSYNTH_TIMEOUT_S = 120.0  # fluidsynth's run may take this long plus the audio's own length
# Notes shorter than this are not played (a clip's cut can leave a sliver of a note at its
# end): in a MIDI file its note-off would fall on its note-on's tick and be sorted first,
# leaving the note held for ever -- and FluidSynth's file renderer runs until every voice
# has ended, writing WAV without end.
MIN_NOTE_S = 0.002


def tim_gm_soundfont() -> Path:
    """``TimGM6mb.sf2`` inside the installed pretty_midi package."""
    try:
        import pretty_midi
    except ImportError as e:
        raise RuntimeError("the tinysoundfont backend needs the soundfont shipped with pretty_midi: "
                           "pip install pretty_midi") from e
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the pretty_midi package; reinstall pretty_midi")
    return path


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and FLUID_R3.is_file()


def resolve_backend(backend: str) -> str:
    """``auto`` -> the backend that will really run; checks that a named one can."""
    if backend == "auto":
        return "fluidsynth" if fluidsynth_available() else "tinysoundfont"
    if backend == "fluidsynth":
        if not fluidsynth_available():
            raise RuntimeError(f"the fluidsynth backend needs the fluidsynth program and {FLUID_R3} "
                               "(Debian: apt-get install fluidsynth fluid-soundfont-gm); "
                               "or use --synth tinysoundfont")
        return backend
    if backend == "tinysoundfont":
        try:
            import tinysoundfont  # noqa: F401
        except ImportError as e:
            raise RuntimeError("the tinysoundfont backend needs: pip install --no-deps tinysoundfont") from e
        return backend
    raise ValueError(f"unknown synth backend {backend!r}; choose auto, tinysoundfont or fluidsynth")


@dataclass(frozen=True)
class SynthConfig:
    """How notes become sound."""

    backend: str = "auto"  # "auto" | "tinysoundfont" | "fluidsynth"
    soundfont: str | None = None  # .sf2 path; None = the backend's own (TimGM6mb / FluidR3_GM)
    reverb_wet: float = 0.14  # reverb level relative to the dry signal; 0 = dry
    reverb_rt60: tuple[float, float] = (0.35, 0.9)  # seconds; each room draws one in this range

    def soundfont_path(self, backend: str) -> Path:
        if self.soundfont:
            return Path(self.soundfont)
        return FLUID_R3 if backend == "fluidsynth" else tim_gm_soundfont()


def render_notes(notes: Sequence[Note], instrument: Instrument, duration: float, sample_rate: int = 44100,
                 config: SynthConfig = SynthConfig(), vibrato: Vibrato = NO_VIBRATO, room_seed: int = 0,
                 vibrato_allowed: Sequence[bool] | None = None) -> np.ndarray:
    """Mono float32 audio, ``round(duration * sample_rate)`` samples, of ``notes`` played
    on ``instrument`` (sorted, monophonic notes; times in seconds). ``vibrato_allowed``:
    per note, whether it may have vibrato (default: all). Notes shorter than
    :data:`MIN_NOTE_S` are not played."""
    backend = resolve_backend(config.backend)
    n = int(round(duration * sample_rate))
    keep = [i for i, note in enumerate(notes) if note.duration >= MIN_NOTE_S]
    if len(keep) < len(notes):
        notes = [notes[i] for i in keep]
        vibrato_allowed = None if vibrato_allowed is None else [vibrato_allowed[i] for i in keep]
    if backend == "fluidsynth":
        dry = _render_fluidsynth(notes, instrument, n, sample_rate, config.soundfont_path(backend),
                                 _bend_events(notes, sample_rate, vibrato, n, vibrato_allowed))
    else:
        dry = _render_tinysoundfont(notes, instrument, n, sample_rate, config.soundfont_path(backend),
                                    _bend_events(notes, sample_rate, vibrato, n, vibrato_allowed))
    dry *= _GAIN[backend]
    out = dry
    if config.reverb_wet > 0:
        out = add_reverb(dry, sample_rate, config.reverb_wet, config.reverb_rt60, room_seed)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:  # a soft limit rather than clipping
        out = np.tanh(out / peak * 1.5) / np.tanh(1.5) * 0.99
    return out.astype(np.float32)


def _bend_events(notes: Sequence[Note], sample_rate: int, vibrato: Vibrato, n: int,
                 allowed: Sequence[bool] | None) -> list[tuple[int, int, float]]:
    """(sample, order, value) pitch-wheel events in semitones; order 0 = back to centre at a
    note-off (sorts with the offs), 2 = vibrato (after offs, before ons)."""
    events: list[tuple[int, int, float]] = []
    if vibrato.depth == 0:
        return events
    for i, note in enumerate(notes):
        if note.duration < vibrato.min_duration or (allowed is not None and not allowed[i]):
            continue
        s0 = int(round((note.onset + vibrato.delay) * sample_rate))
        s1 = min(int(round(note.end * sample_rate)), n)
        samples = np.arange(s0, s1, BEND_STEP)
        if samples.size == 0:
            continue
        semis = vibrato_semitones(notes, (samples + BEND_STEP / 2) / sample_rate, vibrato, allowed)
        events += [(int(s), 2, float(v)) for s, v in zip(samples, semis, strict=True)]
        events.append((s1, 0, 0.0))  # back to centre at the note-off
    return events


def _bend_value(semitones: float) -> int:
    return int(np.clip(round(8192 + semitones / BEND_RANGE * 8192), 0, 16383))


def _render_tinysoundfont(notes: Sequence[Note], instrument: Instrument, n: int, sample_rate: int,
                          soundfont: Path, bends: list[tuple[int, int, float]]) -> np.ndarray:
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(str(soundfont))
    synth.program_select(0, sfid, 0, instrument.gm_program)
    synth.pitchbend_range(0, BEND_RANGE)
    # (sample, order, kind, value): offs (0) before bends (1/2) before ons (3) at one sample
    events: list[tuple[int, int, str, float]] = []
    for note in notes:
        events.append((int(round(note.onset * sample_rate)), 3, "on", note.pitch * 1000 + note.velocity))
        events.append((int(round(note.end * sample_rate)), 0, "off", note.pitch))
    events += [(s, o, "bend", v) for s, o, v in bends]
    events.sort()
    out = np.zeros(n, dtype=np.float32)
    pos = 0

    def run_to(target: int) -> None:
        nonlocal pos
        target = min(target, n)
        if target > pos:
            buf = synth.generate(target - pos)
            stereo = np.frombuffer(buf, dtype=np.float32).reshape(-1, 2)
            out[pos:target] = stereo.mean(axis=1)
            pos = target

    for sample, _order, kind, value in events:
        if sample >= n:
            break
        run_to(sample)
        if kind == "on":
            synth.noteon(0, int(value) // 1000, int(value) % 1000)
        elif kind == "off":
            synth.noteoff(0, int(value))
        else:
            synth.pitchbend(0, _bend_value(value))
    run_to(n)
    return out


def _render_fluidsynth(notes: Sequence[Note], instrument: Instrument, n: int, sample_rate: int,
                       soundfont: Path, bends: list[tuple[int, int, float]]) -> np.ndarray:
    import pretty_midi
    import soundfile as sf

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=instrument.gm_program)
    for note in notes:
        inst.notes.append(pretty_midi.Note(velocity=int(note.velocity), pitch=int(note.pitch),
                                           start=float(note.onset), end=float(note.end)))
    for s, _o, v in bends:
        inst.pitch_bends.append(pretty_midi.PitchBend(pitch=_bend_value(v) - 8192, time=s / sample_rate))
    pm.instruments.append(inst)
    seconds = n / sample_rate
    with tempfile.TemporaryDirectory(prefix="letsplay-fs-") as tmp:
        mid, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        pm.write(mid)
        cmd = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(sample_rate),
               "-T", "wav", "-F", wav, str(soundfont), mid]
        limit = FLUIDSYNTH_TIMEOUT_S + seconds  # far beyond a normal run (about 1/50 of real time)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=limit)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"fluidsynth did not finish {seconds:.1f} s of audio in {limit:.0f} s and was "
                               f"stopped (its output is deleted); render with --synth tinysoundfont, or report "
                               f"the piece") from None
        if proc.returncode != 0 or not os.path.isfile(wav):
            raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        data, sr = sf.read(wav, dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz audio, asked for {sample_rate} Hz")
    mono = data.mean(axis=1)
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, mono.size)] = mono[:n]
    return out


def room_impulse(sample_rate: int, rt60: float, seed: int) -> np.ndarray:
    """A small room: a few early reflections, then exponentially decaying noise that
    darkens as it decays. Unit energy."""
    rng = np.random.default_rng([seed, 0xAC0])
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    # darker tail: a one-pole low-pass whose cutoff falls with time, done as a blend
    smooth = np.convolve(ir, np.ones(8) / 8, mode="same")
    mix = np.clip(t / rt60 * 2, 0, 1)
    ir = (1 - mix) * ir + mix * smooth
    pre = int(0.008 * sample_rate)
    ir[:pre] = 0.0
    for _ in range(6):  # early reflections 8-40 ms
        k = int(rng.uniform(0.008, 0.04) * sample_rate)
        ir[k] += rng.uniform(0.4, 1.0) * rng.choice([-1, 1]) * 3
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def add_reverb(dry: np.ndarray, sample_rate: int, wet: float, rt60_range: tuple[float, float],
               seed: int) -> np.ndarray:
    """``dry + wet * (dry * room)``, cut to the dry length (FFT convolution)."""
    rng = np.random.default_rng([seed, 0x7E7])
    rt60 = float(rng.uniform(*rt60_range))
    ir = room_impulse(sample_rate, rt60, seed)
    n = dry.size + ir.size - 1
    nfft = 1 << (n - 1).bit_length()
    tail = np.fft.irfft(np.fft.rfft(dry, nfft) * np.fft.rfft(ir, nfft), nfft)[: dry.size]
    return (dry + wet * tail).astype(np.float32)
