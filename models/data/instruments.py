"""The two instruments of the paper (cello, trombone): ranges, General MIDI programs,
and the playing tables the synthetic performer follows.

* Cello: four strings tuned C2 G2 D3 A3 (MIDI 36 43 50 57). A stopped note sits where
  the vibrating length is ``2 ** (-n / 12)`` of the open string, ``n`` semitones above
  the open pitch, so the stop's distance from the nut grows monotonically with pitch.
* Trombone (tenor, B-flat): seven slide positions, each a semitone lower than the one
  before. A note is played on a harmonic ("partial") of the tube with the slide at the
  position of :data:`TROMBONE_POSITIONS` (the usual first-choice chart). The slide's
  extension for position ``k`` follows from the tube length: lowering the pitch by a
  semitone needs a ``2 ** (1/12)`` longer tube, and the slide lengthens the tube twice
  its extension.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instrument:
    """An instrument the synthetic performer plays."""

    name: str  # "cello" | "trombone"
    gm_program: int  # General MIDI program, 0-based (GM's "43 Cello" is 42 here)
    low: int  # lowest MIDI pitch the generator writes
    high: int  # highest MIDI pitch the generator writes
    comfortable: tuple[int, int]  # range random melodies mostly stay in
    chord_note: str  # which note of a chord a monophonic part keeps: "top" | "bottom"


INSTRUMENTS: dict[str, Instrument] = {
    # GM program 43 (1-based) "Cello"; C2..A5.
    "cello": Instrument("cello", 42, 36, 81, (38, 72), "top"),
    # GM program 58 (1-based) "Trombone"; E2 (7th position) .. F5.
    "trombone": Instrument("trombone", 57, 40, 77, (41, 70), "bottom"),
}


def get_instrument(name: str) -> Instrument:
    try:
        return INSTRUMENTS[name]
    except KeyError:
        raise ValueError(f"unknown instrument {name!r}; choose one of {sorted(INSTRUMENTS)}") from None


# --------------------------------------------------------------------------- cello

CELLO_STRINGS: tuple[int, ...] = (36, 43, 50, 57)  # open C2, G2, D3, A3 (index 0 = C string)
CELLO_STRING_NAMES: tuple[str, ...] = ("C", "G", "D", "A")
CELLO_STRING_CM = 69.0  # vibrating length nut -> bridge
CELLO_MAX_STRETCH = 7  # semitones above the open string a lower string is kept for


def cello_string_for(pitch: int, previous: int | None = None) -> int:
    """The string (0 = C .. 3 = A) a cellist plays ``pitch`` on.

    The highest string whose open pitch is at or below the note, except that a string
    already in use is kept while the note lies within :data:`CELLO_MAX_STRETCH` semitones
    above it (players avoid needless string crossings)."""
    if pitch < CELLO_STRINGS[0]:
        raise ValueError(f"pitch {pitch} is below the cello's C string ({CELLO_STRINGS[0]})")
    best = max(i for i, p in enumerate(CELLO_STRINGS) if p <= pitch)
    if previous is not None and CELLO_STRINGS[previous] <= pitch <= CELLO_STRINGS[previous] + CELLO_MAX_STRETCH:
        return previous
    return best


def cello_stop_fraction(pitch: int | float, string: int) -> float:
    """Where the finger stops ``string`` for ``pitch``: distance from the nut as a fraction
    of the string length (0 = open string). Monotone increasing in pitch."""
    n = float(pitch) - CELLO_STRINGS[string]
    if n < 0:
        raise ValueError(f"pitch {pitch} is below the open {CELLO_STRING_NAMES[string]} string")
    return 1.0 - 2.0 ** (-n / 12.0)


# --------------------------------------------------------------------------- trombone

# First-choice slide position for every note E2..F5 (MIDI pitch -> position 1..7).
TROMBONE_POSITIONS: dict[int, int] = {
    40: 7, 41: 6, 42: 5, 43: 4, 44: 3, 45: 2, 46: 1,  # 2nd partial, B-flat2
    47: 7, 48: 6, 49: 5, 50: 4, 51: 3, 52: 2, 53: 1,  # 3rd partial, F3
    54: 5, 55: 4, 56: 3, 57: 2, 58: 1,  # 4th partial, B-flat3
    59: 4, 60: 3, 61: 2, 62: 1,  # 5th partial, D4
    63: 3, 64: 2, 65: 1,  # 6th partial, F4
    66: 5, 67: 4, 68: 3, 69: 2, 70: 1,  # 8th partial, B-flat4
    71: 4, 72: 3, 73: 2, 74: 1,  # 10th partial, D5
    75: 3, 76: 2, 77: 1,  # 12th partial, F5
}
TROMBONE_TUBE_CM = 274.0  # B-flat tenor trombone in first position


def trombone_position(pitch: int) -> int:
    """Slide position (1..7) for a MIDI pitch in the trombone's range."""
    try:
        return TROMBONE_POSITIONS[int(pitch)]
    except KeyError:
        raise ValueError(f"pitch {pitch} is outside the trombone table "
                         f"({min(TROMBONE_POSITIONS)}..{max(TROMBONE_POSITIONS)})") from None


def slide_extension_cm(position: float) -> float:
    """How far the slide is out at ``position`` (1 = closed), in cm.

    Each position lowers the pitch a semitone: the tube must be ``2 ** (1/12)`` times
    longer, and the slide adds twice its extension to the tube."""
    return TROMBONE_TUBE_CM * (2.0 ** ((float(position) - 1.0) / 12.0) - 1.0) / 2.0
