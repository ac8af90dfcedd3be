"""Scores: corpus parts and random melodies become clean monophonic note lists."""

from __future__ import annotations

import numpy as np
import pytest

from letsplay.models.data.instruments import INSTRUMENTS
from letsplay.models.data.scores import (
    CORPUS_PIECES,
    DYNAMIC_VELOCITY,
    CorpusPiece,
    Note,
    Score,
    corpus_score,
    note_at,
    part_score,
    random_melody,
)


def _monophonic_in_range(notes: tuple[Note, ...], instrument: str) -> None:
    inst = INSTRUMENTS[instrument]
    on = np.array([n.onset for n in notes])
    assert np.all(np.diff(on) > 0)
    assert all(a.end <= b.onset + 1e-9 for a, b in zip(notes, notes[1:], strict=False))
    assert all(inst.low <= n.pitch <= inst.high and 1 <= n.velocity <= 127 and n.duration > 0 for n in notes)


def _part(*items: object) -> object:
    from music21 import meter, stream

    p = stream.Part()
    p.partName = "Test"
    p.append(meter.TimeSignature("4/4"))
    for it in items:
        p.append(it)
    return p


def test_tempo_ties_chords_and_dynamics() -> None:
    from music21 import chord, dynamics, note, tie

    a = note.Note("C3", quarterLength=1.0)
    a.tie = tie.Tie("start")
    b = note.Note("C3", quarterLength=1.0)
    b.tie = tie.Tie("stop")
    part = _part(dynamics.Dynamic("p"), a, b, dynamics.Dynamic("f"), chord.Chord(["E3", "G3"], quarterLength=1.0),
                 note.Note("A3", quarterLength=1.0), note.Rest(quarterLength=4.0), note.Note("B3", quarterLength=2.0))
    sc = part_score(part, "cello", qpm=60.0, source="test", max_rest=1.5, seed=0)
    n = sc.notes
    # the tie became one half note: 2 s at 60 qpm
    assert [x.pitch for x in n] == [48, 55, 57, 59]  # chord -> its top note for the cello
    assert n[0].onset == pytest.approx(0.0) and n[0].duration == pytest.approx(2.0)
    assert n[1].onset == pytest.approx(2.0) and n[2].onset == pytest.approx(3.0)
    # the 4 s rest was shortened to 1.5 s
    assert n[3].onset == pytest.approx(n[2].end + 1.5)
    # piano notes are softer than forte ones (metrical accents and the swell are small)
    assert n[0].velocity < DYNAMIC_VELOCITY["p"] + 17 < DYNAMIC_VELOCITY["f"] - 17 < n[1].velocity
    bottom = part_score(_part(chord.Chord(["E3", "G3"], quarterLength=1.0)), "trombone", 60.0, "t")
    assert bottom.notes[0].pitch == 52  # the trombone keeps a chord's bottom note


def test_out_of_range_parts_move_by_octaves() -> None:
    from music21 import note

    part = _part(*[note.Note(p, quarterLength=1.0) for p in ("C2", "D2", "E2", "A1")])  # a bass line, too low
    sc = part_score(part, "trombone", 90.0, "low")
    assert sc.transpose == 12
    _monophonic_in_range(sc.notes, "trombone")
    assert [x.pitch for x in sc.notes] == [48, 50, 52, 45]


def test_corpus_parts_parse_offline() -> None:
    for instrument, piece in (("trombone", CORPUS_PIECES["trombone"][0]), ("cello", CORPUS_PIECES["cello"][1])):
        sc = corpus_score(piece, instrument, max_seconds=40.0)
        assert sc.source.startswith("music21:") and len(sc.notes) > 20
        assert sc.duration <= 40.0 + 1e-9
        _monophonic_in_range(sc.notes, instrument)
        assert len({n.velocity for n in sc.notes}) > 3  # expressive, not one flat level
    slow = corpus_score(CorpusPiece("bach/bwv66.6", "bass", 40.0), "trombone")
    fast = corpus_score(CorpusPiece("bach/bwv66.6", "bass", 80.0), "trombone")
    assert slow.duration == pytest.approx(2 * fast.duration, rel=0.05)


def test_random_melody_is_seeded_and_playable() -> None:
    for instrument in ("cello", "trombone"):
        a = random_melody(instrument, 5, 30.0)
        assert a == random_melody(instrument, 5, 30.0)
        assert a.notes != random_melody(instrument, 6, 30.0).notes
        _monophonic_in_range(a.notes, instrument)
        lo, hi = INSTRUMENTS[instrument].comfortable
        assert all(lo <= n.pitch <= hi for n in a.notes)
        assert a.duration <= 30.0 + 1e-9 and a.notes[-1].onset > 20.0


def test_score_roundtrip_segment_and_lookup() -> None:
    sc = random_melody("cello", 2, 20.0)
    assert Score.from_dict(sc.to_dict()).notes == tuple(
        Note(round(n.onset, 6), round(n.duration, 6), n.pitch, n.velocity) for n in sc.notes)
    seg = sc.segment(5.0, 10.0)
    assert seg and seg[0].onset >= 0 and all(n.end <= 5.0 + 1e-9 for n in seg)
    n = sc.notes[3]
    assert note_at(sc.notes, n.onset + 0.5 * n.duration) == n
    assert note_at(sc.notes, -1.0) is None
