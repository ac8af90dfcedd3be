"""Scores for the synthetic performer: note lists from the music21 corpus, from your own
MIDI or MusicXML files, and from a seeded random-melody generator.

A :class:`Score` is a monophonic list of :class:`Note` (onset and duration in seconds,
MIDI pitch, MIDI velocity) plus a description of where it came from. Everything timing-
related is decided here, explicitly, rather than left to music21:

* the tempo is set by us (``qpm``; music21's realtime conversion guesses one when a
  score has no metronome mark, and most corpus scores have none);
* dynamics marks (pp .. ff, sf/sfz/fz accents) are mapped to velocities with
  :data:`DYNAMIC_VELOCITY` (music21's derived ``volume.velocity`` ignores most marks);
* ties are merged (``stripTies``), grace notes dropped, one note of each chord kept,
  overlapping voices truncated so the line is monophonic, and the part is moved by
  octaves into the instrument's range (single outliers are folded by octaves);
* rests longer than ``max_rest`` seconds are shortened (quartet cello parts wait for
  bars at a time; a dataset of an idle performer teaches little).

The corpus ships inside the music21 wheel, so nothing is downloaded.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.data.instruments import Instrument, get_instrument
from letsplay.models.files import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Note:
    """One note: onset and duration in seconds, MIDI pitch and velocity."""

    onset: float  # seconds from the start of the score
    duration: float  # seconds the note sounds (note-on to note-off)
    pitch: int  # MIDI pitch
    velocity: int  # MIDI velocity 1..127

    @property
    def end(self) -> float:
        return self.onset + self.duration


@dataclass(frozen=True)
class Score:
    """A monophonic note list and where it came from."""

    notes: tuple[Note, ...]
    source: str  # "music21:<corpus path>#<part>", "file:<name>#<part>" or "random:<seed>"
    instrument: str
    qpm: float  # the tempo the note times were computed with (quarter notes per minute; MIDI: the first)
    transpose: int = 0  # semitones the whole part was moved by to fit the instrument
    meta: dict[str, Any] = field(default_factory=dict)  # extra facts (title, meter, ...)

    @property
    def duration(self) -> float:
        return max((n.end for n in self.notes), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "instrument": self.instrument, "qpm": self.qpm,
            "transpose": self.transpose, "meta": self.meta,
            "notes": [[round(n.onset, 6), round(n.duration, 6), n.pitch, n.velocity] for n in self.notes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        notes = tuple(Note(float(o), float(du), int(p), int(v)) for o, du, p, v in d["notes"])
        return cls(notes, d["source"], d["instrument"], float(d["qpm"]), int(d.get("transpose", 0)),
                   dict(d.get("meta", {})))

    def segment(self, start: float, end: float) -> tuple[Note, ...]:
        """Notes starting in ``[start, end)``, shifted to start at 0 and cut at ``end``."""
        out = []
        for n in self.notes:
            if start <= n.onset < end:
                out.append(Note(n.onset - start, min(n.duration, end - n.onset), n.pitch, n.velocity))
        return tuple(out)


# --------------------------------------------------------------------------- dynamics

DYNAMIC_VELOCITY: dict[str, int] = {
    "pppp": 20, "ppp": 28, "pp": 38, "p": 52, "mp": 64, "mf": 76, "f": 92, "ff": 106, "fff": 116, "ffff": 124,
}
# Accent marks: a one-note boost on top of the current level (and, for "sfp"/"fp", a new level after).
ACCENT_BOOST: dict[str, int] = {"sf": 22, "sfz": 24, "fz": 22, "sffz": 28, "rfz": 16, "rf": 14, "sfp": 22, "fp": 20}
ACCENT_THEN: dict[str, str] = {"sfp": "p", "fp": "p"}
DEFAULT_DYNAMIC = "mf"


def _clip_velocity(v: float) -> int:
    return int(np.clip(round(v), 1, 127))


# --------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class CorpusPiece:
    """A corpus file and the part of it an instrument plays."""

    path: str  # music21 corpus path, e.g. "haydn/opus74no1/movement1.mxl"
    part: str  # part name (case-insensitive substring), e.g. "cello" or "bass"
    qpm: float | None = None  # tempo; None = a default for the meter (DEFAULT_QPM)

    @property
    def piece_id(self) -> str:
        return f"{self.path}#{self.part}"


# Quarter notes per minute by meter, for scores without a tempo of our own in CorpusPiece.
DEFAULT_QPM: dict[str, float] = {
    "4/4": 100.0, "2/2": 150.0, "3/4": 120.0, "2/4": 84.0, "6/8": 100.0, "3/8": 66.0, "12/8": 100.0,
}

_QUARTETS = [
    "haydn/opus1no1/movement1.mxl", "haydn/opus1no1/movement2.mxl", "haydn/opus1no1/movement3.mxl",
    "haydn/opus1no1/movement4.mxl", "haydn/opus1no1/movement5.mxl",
    "haydn/opus74no1/movement1.mxl", "haydn/opus74no1/movement2.mxl", "haydn/opus74no1/movement3.mxl",
    "haydn/opus74no1/movement4.mxl",
    "mozart/k155/movement1.mxl", "mozart/k155/movement2.mxl", "mozart/k155/movement3.mxl",
    "mozart/k156/movement1.mxl", "mozart/k156/movement2.mxl", "mozart/k156/movement3.mxl",
    "mozart/k458/movement1.mxl", "mozart/k458/movement2.mxl", "mozart/k458/movement3.mxl",
    "mozart/k458/movement4.mxl",
    "mozart/k80/movement1.mxl", "mozart/k80/movement2.mxl", "mozart/k80/movement3.mxl",
    "mozart/k80/movement4.mxl",
    "beethoven/opus18no1/movement1.mxl", "beethoven/opus18no1/movement2.mxl",
    "beethoven/opus18no1/movement3.mxl", "beethoven/opus18no1/movement4.mxl",
]
# Slow movements (by our reading of the scores) get a slower tempo than the meter default.
_SLOW = {"haydn/opus1no1/movement3.mxl": 56.0, "mozart/k155/movement2.mxl": 66.0,
         "mozart/k156/movement2.mxl": 60.0, "mozart/k458/movement3.mxl": 60.0,
         "mozart/k80/movement1.mxl": 72.0, "beethoven/opus18no1/movement2.mxl": 54.0,
         "haydn/opus74no1/movement2.mxl": 50.0}

_CHORALES = [
    "bach/bwv66.6", "bach/bwv1.6", "bach/bwv10.7", "bach/bwv101.7", "bach/bwv102.7", "bach/bwv103.6",
    "bach/bwv104.6", "bach/bwv108.6", "bach/bwv11.6", "bach/bwv110.7", "bach/bwv111.6", "bach/bwv113.8",
    "bach/bwv114.7", "bach/bwv115.6", "bach/bwv116.6", "bach/bwv117.4", "bach/bwv119.9", "bach/bwv12.7",
    "bach/bwv121.6", "bach/bwv122.6", "bach/bwv123.6", "bach/bwv124.6", "bach/bwv125.6", "bach/bwv126.6",
    "bach/bwv127.5", "bach/bwv128.5", "bach/bwv13.6", "bach/bwv133.6", "bach/bwv135.6", "bach/bwv136.6",
]

CORPUS_PIECES: dict[str, tuple[CorpusPiece, ...]] = {
    # String-quartet cello parts.
    "cello": tuple(CorpusPiece(p, "cello", _SLOW.get(p)) for p in _QUARTETS),
    # Bach chorale bass and tenor lines, a trombone choir's staple.
    "trombone": tuple(CorpusPiece(p, part, 72.0) for p in _CHORALES for part in ("bass", "tenor")),
}


def _stable_hash(text: str) -> int:
    """A hash of a string that is the same in every process (``hash`` is salted)."""
    import zlib

    return zlib.crc32(text.encode())


def _pick_part(score: Any, name: str) -> Any:
    parts = list(score.parts)
    for p in parts:
        if name.lower() in (p.partName or "").lower():
            return p
    if name.lower() == "cello":  # "Violoncello" contains "cello"; anything else: the lowest part
        return parts[-1]
    raise ValueError(f"no part named like {name!r} in the score; parts are {[p.partName for p in parts]}")


@functools.lru_cache(maxsize=8)
def _parse_corpus(path: str) -> Any:
    from music21 import corpus

    log.debug("parsing corpus file %s", path)
    return corpus.parse(path)


def corpus_score(piece: CorpusPiece, instrument: str | Instrument, qpm: float | None = None,
                 max_rest: float = 1.2, max_seconds: float | None = None, seed: int = 0) -> Score:
    """The note list of one corpus part, with our tempo and dynamics (module docstring)."""
    score = _parse_corpus(piece.path)
    part = _pick_part(score, piece.part)
    return part_score(part, instrument, qpm or piece.qpm, f"music21:{piece.piece_id}", max_rest, max_seconds, seed)


def part_score(part: Any, instrument: str | Instrument, qpm: float | None, source: str, max_rest: float = 1.2,
               max_seconds: float | None = None, seed: int = 0) -> Score:
    """A music21 part -> :class:`Score` at ``qpm`` (None: :data:`DEFAULT_QPM` for its meter).

    On top of the marked dynamics every note gets a metrical accent (first beat of the
    bar +6, other beats +2) and a slow seeded swell of +-10 over about eight bars, so
    parts without marks (most chorales) are not played at one flat velocity."""
    inst = get_instrument(instrument) if isinstance(instrument, str) else instrument
    meter = "4/4"
    ts = part.recurse().getElementsByClass("TimeSignature")
    if ts:
        meter = ts[0].ratioString
    bar_q = float(ts[0].barDuration.quarterLength) if ts else 4.0
    qpm = float(qpm or DEFAULT_QPM.get(meter, 100.0))
    rng = np.random.default_rng([seed, _stable_hash(source)])
    swell_period = 8 * bar_q * float(rng.uniform(0.7, 1.4))  # quarter notes
    swell_phase = float(rng.uniform(0, 2 * np.pi))
    flat = part.stripTies().flatten()
    sec_per_q = 60.0 / qpm
    # Dynamics, in offset order: (offset, mark)
    dyn = sorted((float(d.offset), str(d.value)) for d in flat.getElementsByClass("Dynamic"))
    dyn_offsets = [o for o, _ in dyn]

    raw: list[tuple[float, float, int, int]] = []
    level = DYNAMIC_VELOCITY[DEFAULT_DYNAMIC]
    extra = 0.0  # seconds added by fermatas so far
    j = 0  # next dynamic to apply
    for el in flat.notes:
        if el.duration.isGrace or el.quarterLength <= 0:
            continue
        off = float(el.offset)
        boost = 0
        while j < len(dyn_offsets) and dyn_offsets[j] <= off + 1e-9:
            mark = dyn[j][1]
            if mark in DYNAMIC_VELOCITY:
                level = DYNAMIC_VELOCITY[mark]
            elif mark in ACCENT_BOOST:
                if dyn_offsets[j] >= off - 1e-9:  # an accent applies only to the note it sits on
                    boost = ACCENT_BOOST[mark]
                if mark in ACCENT_THEN:
                    level = DYNAMIC_VELOCITY[ACCENT_THEN[mark]]
            j += 1
        names = {type(a).__name__ for a in el.articulations}
        if "Accent" in names or "StrongAccent" in names:
            boost = max(boost, 12)
        dur_q = float(el.quarterLength)
        if "Staccato" in names or "Staccatissimo" in names:
            dur_q *= 0.5
        pitches = [p.midi for p in el.pitches]
        pitch = max(pitches) if inst.chord_note == "top" else min(pitches)
        onset = off * sec_per_q + extra
        dur = dur_q * sec_per_q
        if any(type(e).__name__ == "Fermata" for e in el.expressions):
            extra += 0.5 * dur
            dur *= 1.5
        in_bar = off % bar_q
        metric = 6 if in_bar < 1e-6 else (2 if abs(in_bar - round(in_bar)) < 1e-6 else 0)
        swell = 10.0 * np.sin(2 * np.pi * off / swell_period + swell_phase)
        raw.append((onset, dur, pitch, _clip_velocity(level + boost + metric + swell)))

    notes, transpose = _fit_range(_monophonic(raw), inst)
    notes = _compress_rests(notes, max_rest)
    if max_seconds is not None:
        notes = [n for n in notes if n.onset < max_seconds]
        notes = [Note(n.onset, min(n.duration, max_seconds - n.onset), n.pitch, n.velocity) for n in notes]
    if not notes:
        raise ValueError(f"{source}: the part has no notes")
    return Score(tuple(notes), source, inst.name, qpm, transpose, {"meter": meter, "part": part.partName})


def _monophonic(raw: list[tuple[float, float, int, int]]) -> list[Note]:
    """Sort, keep one note per onset, and cut each note at the next onset."""
    raw = sorted(raw, key=lambda r: (round(r[0], 6), -r[3]))
    kept: list[tuple[float, float, int, int]] = []
    for r in raw:
        if kept and abs(kept[-1][0] - r[0]) < 1e-6:
            continue
        kept.append(r)
    out = []
    for i, (o, d, p, v) in enumerate(kept):
        if i + 1 < len(kept):
            d = min(d, kept[i + 1][0] - o)
        if d > 1e-3:
            out.append(Note(o, d, p, v))
    return out


def _fit_range(notes: list[Note], inst: Instrument) -> tuple[list[Note], int]:
    """Move the part by whole octaves so most notes fit; fold the rest by octaves."""
    if not notes:
        return notes, 0
    pitches = np.array([n.pitch for n in notes])
    best, best_in = 0, -1
    for k in (0, 12, -12, 24, -24):
        inside = int(np.sum((pitches + k >= inst.low) & (pitches + k <= inst.high)))
        if inside > best_in:
            best, best_in = k, inside
    out = []
    for n in notes:
        p = n.pitch + best
        while p < inst.low:
            p += 12
        while p > inst.high:
            p -= 12
        out.append(Note(n.onset, n.duration, p, n.velocity))
    return out, best


def _compress_rests(notes: list[Note], max_rest: float, lead_in: float = 0.25) -> list[Note]:
    """Shorten every silence longer than ``max_rest`` to ``max_rest`` (and the opening
    silence to ``lead_in``)."""
    out: list[Note] = []
    shift = 0.0
    prev_end = None
    for n in notes:
        gap_limit = lead_in if prev_end is None else max_rest
        gap = n.onset - (prev_end if prev_end is not None else 0.0)
        if gap > gap_limit:
            shift += gap - gap_limit
        out.append(Note(n.onset - shift, n.duration, n.pitch, n.velocity))
        prev_end = n.end if prev_end is None else max(prev_end, n.end)
    return out


# --------------------------------------------------------------------------- random melodies

_SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
# Rhythm cells in beats (quarter notes); each fills one beat or two.
_CELLS: tuple[tuple[float, ...], ...] = (
    (1.0,), (0.5, 0.5), (1.5, 0.5), (2.0,), (0.25, 0.25, 0.5), (0.5, 0.25, 0.25), (0.75, 0.25),
    (0.25, 0.25, 0.25, 0.25), (1.0, 1.0), (3.0, 1.0),
)
_CELL_P = np.array([0.2, 0.2, 0.1, 0.1, 0.06, 0.06, 0.06, 0.08, 0.09, 0.05])


def random_melody(instrument: str | Instrument, seed: int, seconds: float) -> Score:
    """A seeded melody in the instrument's comfortable range: scale-wise steps with
    occasional leaps, phrases of 2-4 bars ending on a long note and a breath, a dynamic
    level per phrase with a crescendo or diminuendo, legato or detached per phrase."""
    inst = get_instrument(instrument) if isinstance(instrument, str) else instrument
    rng = np.random.default_rng([seed, 0x5C0E])
    mode = str(rng.choice(list(_SCALES)))
    tonic = int(rng.integers(0, 12))
    lo, hi = inst.comfortable
    scale = [p for p in range(inst.low, inst.high + 1) if (p - tonic) % 12 in _SCALES[mode] and lo <= p <= hi]
    qpm = float(rng.uniform(66, 132))
    beat = 60.0 / qpm
    idx = int(rng.integers(len(scale) // 3, 2 * len(scale) // 3))
    notes: list[Note] = []
    t = 0.25
    while t < seconds:
        bars = int(rng.integers(2, 5))
        level = float(rng.uniform(45, 110))
        slope = float(rng.uniform(-18, 18))
        legato = rng.random() < 0.65
        beats_total = 4 * bars
        b = 0.0
        while b < beats_total - 2:
            cell = _CELLS[int(rng.choice(len(_CELLS), p=_CELL_P / _CELL_P.sum()))]
            for d in cell:
                step = int(rng.choice([-4, -3, -2, -1, 0, 1, 2, 3, 4], p=[.03, .05, .14, .27, .04, .27, .14, .05, .01]))
                if rng.random() < 0.05:
                    step = int(rng.choice([-7, -5, 5, 7]))
                idx += step
                if idx < 0 or idx >= len(scale):  # reflect at the range ends
                    idx = -idx if idx < 0 else 2 * (len(scale) - 1) - idx
                    idx = int(np.clip(idx, 0, len(scale) - 1))
                vel = level + slope * (b / beats_total) + (8 if b % 4 == 0 else 0) + rng.normal(0, 3)
                dur = d * beat * (0.95 if legato else float(rng.uniform(0.45, 0.7)))
                notes.append(Note(t + b * beat, dur, scale[idx], _clip_velocity(vel)))
                b += d
        # a long closing note, then a breath
        idx = int(np.clip(idx + int(rng.integers(-1, 2)), 0, len(scale) - 1))
        notes.append(Note(t + b * beat, 1.9 * beat, scale[idx], _clip_velocity(level - 6)))
        t += (b + 2.0 + float(rng.choice([0.0, 0.5, 1.0]))) * beat
    notes = [n for n in notes if n.onset < seconds]
    notes = [Note(n.onset, min(n.duration, seconds - n.onset), n.pitch, n.velocity) for n in notes]
    return Score(tuple(notes), f"random:{seed}", inst.name, qpm, 0, {"mode": mode, "tonic": tonic})


# --------------------------------------------------------------------------- your own files

# File name endings read as scores, and the reader for each.
SCORE_FILE_TYPES: dict[str, str] = {".mid": "midi", ".midi": "midi", ".musicxml": "musicxml", ".xml": "musicxml",
                                    ".mxl": "musicxml"}
CHORD_SECONDS = 0.03  # MIDI notes starting this close together are one chord (one note of it is kept)


@dataclass(frozen=True)
class FilePart:
    """One part (MusicXML) or track (MIDI) of a score file."""

    label: str  # its name, made unique in the file ("part 2" when it has none)
    program: int | None  # General MIDI program, 0-based, when the file says
    n_notes: int
    median_pitch: float  # sounding MIDI pitch; how parts are ranked from low to high
    obj: Any = field(compare=False, repr=False)  # the music21 Part or pretty_midi Instrument


@dataclass(frozen=True)
class _ScoreFile:
    kind: str  # "midi" | "musicxml"
    parts: tuple[FilePart, ...]
    qpm: float | None  # the file's first tempo (MIDI) or metronome mark (MusicXML), if any


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), which datasets record to notice a changed score."""
    return sha256_file(path)


def _check_file(path: str | Path) -> tuple[Path, str]:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"score file {str(path)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"score file {str(path)!r} is not a file")
    kind = SCORE_FILE_TYPES.get(p.suffix.lower())
    if kind is None:
        raise ValueError(f"score file {str(path)!r}: unsupported type {p.suffix or '(no ending)'!r}; give a MIDI "
                         f"(.mid, .midi) or MusicXML (.musicxml, .xml, .mxl) file")
    return p, kind


def _unique_labels(names: list[str | None]) -> list[str]:
    labels = [(n or "").strip() or f"part {i + 1}" for i, n in enumerate(names)]
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab.lower()] = counts.get(lab.lower(), 0) + 1
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if counts[lab.lower()] > 1:
            seen[lab.lower()] = seen.get(lab.lower(), 0) + 1
            lab = f"{lab} ({seen[lab.lower()]})"
        out.append(lab)
    return out


@functools.lru_cache(maxsize=8)
def _read_score_file(path: str, kind: str, mtime_ns: int, size: int) -> _ScoreFile:
    """Parse a score file (cached while the file is unchanged)."""
    log.debug("reading score file %s", path)
    if kind == "midi":
        import pretty_midi

        try:
            pm = pretty_midi.PrettyMIDI(path)
        except Exception as e:  # pretty_midi/mido raise many kinds for a damaged file
            raise ValueError(f"cannot be read as MIDI ({_describe(e)})") from None
        tracks = [t for t in pm.instruments if not t.is_drum]
        labels = _unique_labels([t.name for t in tracks])
        parts = tuple(FilePart(lab, int(t.program), len(t.notes),
                               float(np.median([n.pitch for n in t.notes])) if t.notes else 0.0, t)
                      for lab, t in zip(labels, tracks, strict=True))
        tempi = pm.get_tempo_changes()[1]
        return _ScoreFile(kind, parts, float(tempi[0]) if len(tempi) else None)
    from music21 import converter, stream

    try:
        sc = converter.parse(path, format="musicxml", forceSource=True)
    except Exception as e:  # music21 raises many kinds for a damaged file
        raise ValueError(f"cannot be read as MusicXML ({_describe(e)})") from None
    if isinstance(sc, stream.Opus):
        scores = list(sc.scores)
        if not scores:
            raise ValueError("holds no score")
        sc = scores[0]
    try:
        sc = sc.toSoundingPitch()  # transposing instruments: their written notes -> what sounds
    except Exception:  # noqa: BLE001 - a score music21 cannot transpose is taken as written
        log.debug("%s: could not convert to sounding pitch; using the written notes", path)
    m21_parts = list(sc.parts) if isinstance(sc, stream.Score) else [sc]
    labels = _unique_labels([p.partName for p in m21_parts])
    parts = []
    for lab, p in zip(labels, m21_parts, strict=True):
        lows = [min(x.midi for x in el.pitches) for el in p.flatten().notes if el.pitches]
        inst = p.getInstrument(returnDefault=False)
        program = getattr(inst, "midiProgram", None) if inst is not None else None
        parts.append(FilePart(lab, None if program is None else int(program), len(lows),
                              float(np.median(lows)) if lows else 0.0, p))
    qpm = None
    for mm in sc.flatten().getElementsByClass("MetronomeMark"):
        q = mm.getQuarterBPM()
        if q:
            qpm = float(q)
            break
    return _ScoreFile("musicxml", tuple(parts), qpm)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _load_file(path: str | Path) -> _ScoreFile:
    p, kind = _check_file(path)
    st = p.stat()
    try:
        return _read_score_file(str(p.resolve()), kind, st.st_mtime_ns, st.st_size)
    except ValueError as e:
        raise ValueError(f"score file {str(path)!r}: {e}") from None


def score_file_parts(path: str | Path) -> list[str]:
    """The part (MusicXML) or track (MIDI, drums left out) names of a score file, as
    ``part=`` of :func:`file_score` takes them."""
    return [p.label for p in _load_file(path).parts]


def choose_part(parts: tuple[FilePart, ...] | list[FilePart], instrument: str | Instrument,
                name: str | None = None, where: str = "the score") -> FilePart:
    """The part an instrument plays.

    ``name`` given: the part of that name (case-insensitive), else the only one whose name
    contains it. Otherwise, among the parts with notes: the first named like the
    instrument ("Violoncello" for the cello), else the first with its General MIDI
    program, else the only one, else the lowest-sounding (both instruments take the bass
    line). Raises ValueError naming the parts there are when none fits."""
    inst = get_instrument(instrument) if isinstance(instrument, str) else instrument
    names = [p.label for p in parts]
    if name is not None:
        key = name.strip().lower()
        exact = [p for p in parts if p.label.lower() == key]
        inside = [p for p in parts if key in p.label.lower()]
        if exact or len(inside) == 1:
            return (exact or inside)[0]
        if inside:
            raise ValueError(f"--part {name!r} matches several parts of {where}: {[p.label for p in inside]}; "
                             f"give one of them in full")
        raise ValueError(f"{where} has no part named {name!r}; its parts are {names}")
    playing = [p for p in parts if p.n_notes > 0]
    if not playing:
        raise ValueError(f"{where} holds no notes" + (f" (parts: {names})" if names else ""))
    for p in playing:
        if inst.name in p.label.lower():
            return p
    for p in playing:
        if p.program == inst.gm_program:
            return p
    if len(playing) == 1:
        return playing[0]
    return min(playing, key=lambda p: p.median_pitch)


def _midi_notes(track: Any, inst: Instrument) -> list[tuple[float, float, int, int]]:
    """A MIDI track's notes with their own times and velocities; of the notes starting
    within :data:`CHORD_SECONDS` of each other, the instrument's chord note."""
    notes = sorted((n for n in track.notes if n.end > n.start), key=lambda n: (n.start, n.pitch))
    raw: list[tuple[float, float, int, int]] = []
    i = 0
    while i < len(notes):
        j = i + 1
        while j < len(notes) and notes[j].start - notes[i].start < CHORD_SECONDS:
            j += 1
        group = notes[i:j]
        n = max(group, key=lambda x: x.pitch) if inst.chord_note == "top" else min(group, key=lambda x: x.pitch)
        onset = float(notes[i].start)
        raw.append((onset, float(n.end) - onset, int(n.pitch), _clip_velocity(n.velocity)))
        i = j
    return raw


def file_score(path: str | Path, instrument: str | Instrument, part: str | None = None, name: str | None = None,
               seed: int = 0, max_rest: float = math.inf) -> Score:
    """One part of a MIDI or MusicXML file -> :class:`Score` (source ``file:<name>#<part>``,
    ``name`` defaulting to the file's name).

    MIDI keeps the file's timing (tempo changes included) and note velocities. MusicXML
    goes through :func:`part_score` (ties, chords, dynamics, fermatas) at the tempo of the
    file's first metronome mark, else the default for its meter. Both are made monophonic
    and moved by octaves into the instrument's range like the corpus parts; rests are kept
    as written (up to ``max_rest`` seconds) except that the silence before the first note
    is shortened to a quarter second. The part is chosen by :func:`choose_part`."""
    inst = get_instrument(instrument) if isinstance(instrument, str) else instrument
    f = _load_file(path)
    where = f"score file {str(path)!r}"
    chosen = choose_part(f.parts, inst, part, where)
    if chosen.n_notes == 0:
        raise ValueError(f"{where}: part {chosen.label!r} holds no notes; choose another with --part "
                         f"(parts: {[p.label for p in f.parts]})")
    source = f"file:{name or Path(path).name}#{chosen.label}"
    if f.kind == "midi":
        notes, transpose = _fit_range(_monophonic(_midi_notes(chosen.obj, inst)), inst)
        notes = _compress_rests(notes, max_rest)
        if not notes:
            raise ValueError(f"{where}: part {chosen.label!r} holds no notes")
        sc = Score(tuple(notes), source, inst.name, round(f.qpm or 120.0, 3), transpose, {})
    else:
        sc = part_score(chosen.obj, inst, f.qpm, source, max_rest=max_rest, seed=seed)
    meta = {**sc.meta, "file": str(path), "format": f.kind, "part": chosen.label,
            "parts": [p.label for p in f.parts]}
    return replace(sc, meta=meta)


def note_at(notes: tuple[Note, ...] | list[Note], t: float) -> Note | None:
    """The note sounding at time ``t`` (notes sorted and monophonic), or None."""
    onsets = [n.onset for n in notes]
    i = bisect.bisect_right(onsets, t) - 1
    if i >= 0 and notes[i].onset <= t < notes[i].end:
        return notes[i]
    return None


def score_summary(score: Score) -> dict[str, Any]:
    """A JSON-able description of a score without its notes (for manifests)."""
    d = asdict(score)
    d.pop("notes")
    d["n_notes"] = len(score.notes)
    d["duration"] = round(score.duration, 3)
    return d
