"""Scores: corpus parts, MIDI/MusicXML files and random melodies become clean monophonic note lists."""

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
    file_score,
    note_at,
    part_score,
    random_melody,
    score_file_parts,
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


# --------------------------------------------------------------------------- your own files


def _midi(path: object, tracks: list[tuple[str, int, list[tuple[float, float, int, int]]]], qpm: float = 90.0) -> None:
    """Write a MIDI file: tracks of (name, 0-based program, [(start, end, pitch, velocity)])."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    for name, program, notes in tracks:
        t = pretty_midi.Instrument(program, name=name)
        t.notes = [pretty_midi.Note(v, p, s, e) for s, e, p, v in notes]
        pm.instruments.append(t)
    pm.write(str(path))


def _musicxml(path: object, parts: dict[str, list[str]], qpm: float | None = 60.0) -> None:
    """Write a MusicXML file: one part per name, quarter notes (``"r"``: a quarter rest)."""
    from music21 import meter, note, stream, tempo

    sc = stream.Score()
    for name, pitches in parts.items():
        p = stream.Part()
        p.partName = name
        p.append(meter.TimeSignature("4/4"))
        if qpm:
            p.append(tempo.MetronomeMark(number=qpm))
        for x in pitches:
            p.append(note.Rest(quarterLength=1.0) if x == "r" else note.Note(x, quarterLength=1.0))
        sc.insert(0, p)
    sc.write("musicxml", str(path))


def test_midi_file_keeps_its_timing_and_velocities(tmp_path) -> None:
    path = tmp_path / "tune.mid"
    line = [(1.0, 1.5, 48, 40), (1.5, 2.5, 50, 100), (2.5, 2.6, 52, 70), (6.0, 7.0, 53, 90)]
    chord = [(1.0, 1.4, 60, 30)]  # sounds with the first note: the cello keeps a chord's top note
    _midi(path, [("Violoncello", 42, line + chord)], qpm=75.0)
    sc = file_score(path, "cello")
    assert sc.source == "file:tune.mid#Violoncello" and sc.qpm == pytest.approx(75.0)
    # the opening silence is shortened to a quarter second; everything after keeps the file's times
    # (to a MIDI tick: 60 / (75 qpm * 220 ticks per quarter) = 3.6 ms)
    assert [n.onset for n in sc.notes] == pytest.approx([0.25, 0.75, 1.75, 5.25], abs=0.004)
    assert [n.duration for n in sc.notes] == pytest.approx([0.4, 1.0, 0.1, 1.0], abs=0.004)
    assert [n.pitch for n in sc.notes] == [60, 50, 52, 53] and [n.velocity for n in sc.notes] == [30, 100, 70, 90]
    assert sc.meta["format"] == "midi" and sc.meta["part"] == "Violoncello"
    _monophonic_in_range(sc.notes, "cello")


def test_file_part_choice(tmp_path) -> None:
    notes = {"hi": [(0.0, 1.0, 72, 80)], "mid": [(0.0, 1.0, 55, 80)], "lo": [(0.0, 1.0, 43, 80)]}
    path = tmp_path / "band.mid"
    _midi(path, [("Flute", 73, notes["hi"]), ("Horn", 60, notes["mid"]), ("", 0, notes["lo"]),
                 ("Trombone", 57, notes["mid"])])
    assert score_file_parts(path) == ["Flute", "Horn", "part 3", "Trombone"]
    assert file_score(path, "trombone").meta["part"] == "Trombone"  # named like the instrument
    assert file_score(path, "cello").meta["part"] == "part 3"  # no cello: the lowest-sounding part
    assert file_score(path, "cello", part="horn").source == "file:band.mid#Horn"  # --part, any case
    with pytest.raises(ValueError, match=r"no part named 'Tuba'.*'Flute', 'Horn', 'part 3'"):
        file_score(path, "cello", part="Tuba")
    prog = tmp_path / "prog.mid"  # unnamed tracks: the one with the cello's General MIDI program
    _midi(prog, [("", 0, notes["lo"]), ("", 42, notes["hi"])])
    assert file_score(prog, "cello").meta["part"] == "part 2"
    one = tmp_path / "one.mid"  # a single part is played whatever it is
    _midi(one, [("Piccolo", 72, [(0.0, 1.0, 86, 80)])])
    assert file_score(one, "trombone").notes[0].pitch == 86 - 12  # moved down an octave into range


def test_musicxml_file_tempo_parts_and_dynamics(tmp_path) -> None:
    path = tmp_path / "duo.musicxml"
    _musicxml(path, {"Violin": ["E5", "F5", "G5", "A5"], "Violoncello": ["C3", "r", "r", "D3", "E3"]}, qpm=120.0)
    sc = file_score(path, "cello")
    assert sc.source == "file:duo.musicxml#Violoncello" and sc.qpm == 120.0
    assert [n.pitch for n in sc.notes] == [48, 50, 52]
    assert [n.onset for n in sc.notes] == pytest.approx([0.0, 1.5, 2.0])  # the rests kept as written
    assert file_score(path, "cello", part="violin").notes[0].pitch == 76
    with_rests = tmp_path / "rests.musicxml"
    _musicxml(with_rests, {"Cello": ["C3"], "Empty": ["r", "r"]})
    with pytest.raises(ValueError, match="'Empty' holds no notes"):
        file_score(with_rests, "cello", part="Empty")
    plain = tmp_path / "plain.xml"  # no metronome mark: the meter's default tempo
    _musicxml(plain, {"Bass": ["C3", "D3"]}, qpm=None)
    assert file_score(plain, "trombone").qpm == 100.0


def test_bad_score_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        file_score(tmp_path / "missing.mid", "cello")
    (tmp_path / "notes.txt").write_text("C D E")
    with pytest.raises(ValueError, match="unsupported type '.txt'"):
        file_score(tmp_path / "notes.txt", "cello")
    (tmp_path / "broken.mid").write_bytes(b"MThd garbage")
    with pytest.raises(ValueError, match="cannot be read as MIDI"):
        file_score(tmp_path / "broken.mid", "cello")
    (tmp_path / "broken.musicxml").write_text("<html/>")
    with pytest.raises(ValueError, match="cannot be read as MusicXML"):
        file_score(tmp_path / "broken.musicxml", "cello")
    _midi(tmp_path / "silent.mid", [("Cello", 42, [])])
    with pytest.raises(ValueError, match="holds no notes"):
        file_score(tmp_path / "silent.mid", "cello")
    _musicxml(tmp_path / "rests.musicxml", {"Cello": ["r", "r"]})
    with pytest.raises(ValueError, match="holds no notes"):
        file_score(tmp_path / "rests.musicxml", "cello")
