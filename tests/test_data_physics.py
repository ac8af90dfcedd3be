"""The synthetic performer moves by the physics of playing, with exact, rigid keypoints."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from letsplay.models.data.instruments import (
    CELLO_STRINGS,
    TROMBONE_POSITIONS,
    cello_stop_fraction,
    cello_string_for,
    slide_extension_cm,
    trombone_position,
)
from letsplay.models.data.performer_motion import (
    BOW_RETAKE_AT,
    BOW_RETAKE_S,
    SLIDE_FORESHORTEN,
    Body,
    bow_position,
    bow_retake_glide,
    cello_fingering,
    perform,
    plan_bow,
    two_bone_ik,
)
from letsplay.models.data.performer_render import LABEL, PART_LABELS, Look, PerformerRenderer
from letsplay.models.data.scores import Note, random_melody
from letsplay.models.skeleton import EDGES, LEFT_HAND, RIGHT_HAND, instrument_point_names
from letsplay.models.spec import VideoSpec

FPS = 30.0


def _still(body: Body) -> Body:
    """The same performer without sway, nods or leaning (the instrument then stays put)."""
    return dataclasses.replace(body, sway_deg=0.0, nod_deg=0.0, lean_deg=0.0, bow_lean_deg=0.0)


def _frames(notes: list[Note] | tuple[Note, ...], tail: float = 0.3) -> int:
    return int((max(n.end for n in notes) + tail) * FPS)


def _reversal_frames(x: np.ndarray, eps: float = 1e-9) -> list[int]:
    """Frames where the motion of x changes direction (pauses in between are skipped)."""
    d = np.diff(x)
    out, last = [], 0.0
    for i, v in enumerate(d):
        if abs(v) <= eps:
            continue
        s = np.sign(v)
        if last and s != last:
            out.append(i)  # the move from frame i to i+1 goes the other way
        last = s
    return out


# --------------------------------------------------------------------------- cello


def _rests(notes: list[Note] | tuple[Note, ...]) -> np.ndarray:
    """[N] the silence before each note (from the clip's start for the first)."""
    heard, out = 0.0, []
    for n in notes:
        out.append(n.onset - heard)
        heard = max(heard, n.end)
    return np.array(out)


def test_bow_reverses_at_every_onset_and_nowhere_else() -> None:
    notes = random_melody("cello", seed=3, seconds=20).notes
    t = np.arange(_frames(notes)) / FPS
    b = bow_position(notes, t)
    onsets = np.array([n.onset for n in notes]) * FPS
    rest = _rests(notes)
    retaken = rest >= BOW_RETAKE_S
    assert 0 < retaken[1:].sum() < len(notes) // 2  # the melody has rests, and phrases between them
    ends = np.maximum.accumulate([n.end for n in notes])
    in_glide = np.zeros(len(t), bool)  # the retake's glide: a rest that has lasted BOW_RETAKE_S
    for i in range(len(notes)):
        nxt = notes[i + 1].onset if i + 1 < len(notes) else t[-1] + 1
        in_glide |= (t >= ends[i] + BOW_RETAKE_S - 1 / FPS) & (t <= nxt)
    revs = _reversal_frames(b)
    assert len(revs) > 20
    for r in revs:  # every reversal is on an onset (within one frame), or the retake's glide
        assert np.min(np.abs(onsets - r)) <= 1.0 or in_glide[r], f"reversal at frame {r} is not at a note onset"
    # ... and every onset after the first changes the direction (one bow stroke per note),
    # except after a rest, where the bow is retaken for a down-bow
    _, direction, dist = plan_bow(notes)
    assert np.all(direction[1:][~retaken[1:]] == -direction[:-1][~retaken[1:]])
    assert np.all(direction[retaken] == 1.0) and direction[0] == 1.0
    assert np.all(dist > 0)
    for i in range(1, len(notes)):
        if not retaken[i] or direction[i - 1] < 0:
            assert np.min(np.abs(np.array(revs) - onsets[i])) <= 1.0 or in_glide[int(onsets[i])], \
                f"no reversal at note {i}"
    # the bow stays on its hair
    assert b.min() >= 8.0 - 1e-9 and b.max() <= 50.0 + 1e-9


def test_the_bow_is_retaken_after_a_rest() -> None:
    """A silence of BOW_RETAKE_S or more: the bow waits that long where the note ended, glides
    back toward BOW_RETAKE_AT, and the next note starts a down-bow from where it got to --
    the same on every path (plan, position, a frame-by-frame glide); a shorter gap reverses."""
    notes = [Note(0.1, 0.5, 50, 100), Note(0.6, 0.5, 52, 100), Note(1.1, 0.9, 53, 110),  # down, up, down
             Note(2.4, 0.5, 55, 90),  # after a 0.4 s rest: retaken, a down-bow again
             Note(3.1, 0.4, 57, 90)]  # after 0.2 s: an up-bow
    start, direction, dist = plan_bow(notes)
    assert direction.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0]
    end2 = start[2] + dist[2]  # where the third stroke ended (toward the tip)
    assert end2 > BOW_RETAKE_AT + 10
    assert start[3] == pytest.approx(float(bow_retake_glide(end2, 0.4)))
    assert BOW_RETAKE_AT < start[3] < end2  # part-way back, gliding
    t = np.arange(int(3.6 * FPS)) / FPS
    b = bow_position(notes, t)
    rest = (t > 2.0) & (t < 2.4)
    still = rest & (t - 2.0 < BOW_RETAKE_S)
    assert np.allclose(b[still], end2) and np.all(np.diff(b[rest & ~still]) < 0)  # waits, then glides back
    at = int(np.ceil(2.4 * FPS - 1e-6))  # the retake stroke's first frame: from the glide, down (toward the tip)
    assert b[at - 1] >= start[3] - 1e-9 and b[at] >= start[3] - 1e-9 and b[at + 3] > b[at] + 1
    # the glide is memoryless: glided on from where it got to, it is where it would be
    mid = bow_retake_glide(end2, BOW_RETAKE_S + 0.1)
    whole = float(bow_retake_glide(end2, BOW_RETAKE_S + 0.35))
    assert bow_retake_glide(mid, BOW_RETAKE_S + 0.25) == pytest.approx(whole)
    silence = bow_position([], t)  # no notes: from mid-bow, still for BOW_RETAKE_S, then the glide
    assert silence[0] == pytest.approx(29.0) and silence[-1] == pytest.approx(BOW_RETAKE_AT, abs=1e-3)


def test_bow_speed_grows_with_velocity() -> None:
    soft = [Note(0.0, 0.25, 50, 40)]
    loud = [Note(0.0, 0.25, 50, 110)]
    assert plan_bow(loud)[2][0] > 2 * plan_bow(soft)[2][0]


def test_bow_hand_keypoints_follow_the_bow() -> None:
    # one string (D: pitches 50..56), no sway: the hand moves along the bow by exactly the bow's travel
    notes = [Note(0.2 + 0.4 * i, 0.35, 50 + (i * 3) % 7, 60 + 5 * (i % 8)) for i in range(16)]
    body = _still(Body.from_seed(5, "cello"))
    perf = perform(notes, body, _frames(notes))
    u = perf.geometry["bow_dir"][0]
    wrist = perf.geometry["pixels"][:, 4]
    along = wrist @ u  # pixels along the bow
    b = perf.state["bow_position"] * perf.px_per_cm
    # hand = contact - b * u: the projection falls exactly as the bow position rises
    assert np.allclose(along - along[0], -(b - b[0]), atol=1e-6)
    onsets = np.array([n.onset for n in notes]) * FPS
    for r in _reversal_frames(along):
        assert np.min(np.abs(onsets - r)) <= 1.0


def test_cello_string_and_stop_are_monotone_in_pitch() -> None:
    for s, open_pitch in enumerate(CELLO_STRINGS):
        fr = [cello_stop_fraction(p, s) for p in range(open_pitch, open_pitch + 25)]
        assert fr[0] == 0.0 and np.all(np.diff(fr) > 0)
    assert [cello_string_for(p) for p in (36, 42, 43, 49, 50, 56, 57, 81)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cello_string_for(50, previous=1) == 1  # stays on the G string within reach
    with pytest.raises(ValueError):
        cello_string_for(35)


def test_cello_fingertip_on_the_string_and_monotone_in_pitch() -> None:
    # a slow chromatic scale over the whole range, up and down; notes short enough for no vibrato
    pitches = list(range(36, 82)) + list(range(80, 35, -1))
    notes = [Note(0.3 + 0.45 * i, 0.36, p, 80) for i, p in enumerate(pitches)]
    body = _still(Body.from_seed(11, "cello"))
    perf = perform(notes, body, _frames(notes))
    fing = cello_fingering(notes)
    g = perf.geometry
    assert perf.state["left_reach_error"].max() < 1e-6
    by_string: dict[int, list[tuple[int, float]]] = {}
    for i, n in enumerate(notes):
        if fing.finger[i] == 0:
            continue  # open string: nothing pressed
        f = int(round((n.onset + 0.2) * FPS))  # mid-note, after the hand has arrived
        s = int(fing.string[i])
        tip = g["pixels"][f, LEFT_HAND[0] + 4 + 4 * int(fing.finger[i])]  # the pressing finger's tip
        nut, bridge = g["strings_nut"][f, s], g["strings_bridge"][f, s]
        along = bridge - nut
        frac = float((tip - nut) @ along / (along @ along))
        unit = along / np.linalg.norm(along)
        off = abs(float(unit[0] * (tip - nut)[1] - unit[1] * (tip - nut)[0]))
        assert off < 1e-6, f"note {n.pitch}: fingertip {off:.3g} px off the string"
        assert frac == pytest.approx(cello_stop_fraction(n.pitch, s), abs=1e-9)
        by_string.setdefault(s, []).append((n.pitch, frac))
    assert len(by_string) == 4
    for s, pts in by_string.items():
        pts.sort()
        ps, fr = np.array([p for p, _ in pts]), np.array([f for _, f in pts])
        same = np.diff(ps) == 0
        assert np.all(np.diff(fr)[~same] > 0), f"string {s}: stop not monotone in pitch"
        assert np.allclose(np.diff(fr)[same], 0)


def test_vibrato_rolls_the_finger_by_the_audible_bend() -> None:
    notes = [Note(0.2, 2.0, 62, 90)]  # D4 on the A string, long: vibrato
    perf = perform(notes, _still(Body.from_seed(2, "cello")), _frames(notes))
    st = perf.state
    vib = st["vibrato_semitones"]
    assert np.abs(vib).max() > 0.1
    n = 62 - CELLO_STRINGS[3]
    expected = 1 - 2 ** (-(n + vib) / 12)
    sounding = (np.arange(len(vib)) / FPS > 0.3) & (np.arange(len(vib)) / FPS < 2.1)
    assert np.allclose(st["stop_fraction_vibrato"][sounding], expected[sounding], atol=1e-12)


# --------------------------------------------------------------------------- trombone


def test_trombone_table_covers_the_range_with_seven_positions() -> None:
    assert set(TROMBONE_POSITIONS) == set(range(40, 78))
    assert set(TROMBONE_POSITIONS.values()) == set(range(1, 8))
    assert trombone_position(46) == 1 and trombone_position(40) == 7 and trombone_position(59) == 4
    ext = [slide_extension_cm(p) for p in range(1, 8)]
    assert ext[0] == 0 and np.all(np.diff(ext) > 0) and 50 < ext[-1] < 65  # 7th position ~57 cm out


def test_trombone_slide_follows_the_table_and_moves_before_onsets() -> None:
    notes = random_melody("trombone", seed=4, seconds=15).notes
    body = Body.from_seed(9, "trombone")
    perf = perform(notes, body, _frames(notes))
    st, g = perf.state, perf.geometry
    hold = 0.5 * (perf.geometry["pixels"][:, RIGHT_HAND[0] + 6] + perf.geometry["pixels"][:, RIGHT_HAND[0] + 14])
    for i, n in enumerate(notes):
        f0, f1 = int(np.ceil(n.onset * FPS)), int(np.floor(n.end * FPS))
        nxt = notes[i + 1].onset - 0.09 if i + 1 < len(notes) else n.end
        frames = [f for f in range(f0, f1 + 1) if f / FPS < nxt - 1e-9 and f < len(st["slide_position"])]
        pos = trombone_position(n.pitch)
        for f in frames:  # while the note sounds, the slide is exactly at the table's position
            assert st["slide_position"][f] == pytest.approx(pos, abs=1e-9)
            assert st["slide_extension"][f] == pytest.approx(slide_extension_cm(pos), abs=1e-9)
            # ... and so is the hand: its grip sits that far along the slide from the mouthpiece
            reach = float((hold[f] - g["mouth"][f]) @ g["slide_dir"][f])
            want = (24.0 + slide_extension_cm(pos)) * SLIDE_FORESHORTEN * body.size * perf.px_per_cm
            assert reach == pytest.approx(want, abs=1e-6)
    # the slide only moves in the short leads before onsets
    moving = np.flatnonzero(np.abs(np.diff(st["slide_position"])) > 1e-9)
    onsets = np.array([n.onset for n in notes])
    for f in moving:
        lead = onsets[onsets > f / FPS + 1e-9]  # the move from frame f to f + 1 ends at or before this onset
        assert len(lead) and lead[0] - f / FPS <= 0.09 + 1 / FPS + 1e-9, f"slide moves at frame {f}, not before a note"


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_keypoints_inside_frame_and_bones_rigid(instrument: str) -> None:
    for seed in range(4):
        body = Body.from_seed(100 + seed, instrument)
        notes = random_melody(instrument, seed=seed, seconds=12).notes
        # plus the extremes of the range, loud and long
        lo, hi = (36, 81) if instrument == "cello" else (40, 77)
        end = notes[-1].end
        notes = notes + (Note(end + 0.2, 1.5, lo, 127), Note(end + 1.8, 1.5, hi, 127), Note(end + 3.4, 1.0, lo, 20))
        perf = perform(notes, body, _frames(notes), VideoSpec())
        kp = perf.keypoints
        assert kp.shape == (len(perf.times), 67, 2)
        assert kp.min() >= 0.0 and kp.max() <= 1.0, f"{instrument} seed {seed}: a keypoint leaves the frame"
        assert perf.state["left_reach_error"].max() < 1e-6 and perf.state["right_reach_error"].max() < 1e-6
        lengths = np.stack([np.linalg.norm(perf.world[:, a] - perf.world[:, b], axis=-1) for a, b in EDGES], 1)
        spread = lengths.max(axis=0) - lengths.min(axis=0)
        assert spread.max() < 1e-9, f"bone {EDGES[int(spread.argmax())]} changes length"


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_elbows_never_jump_to_their_mirror_image(instrument: str) -> None:
    """An elbow stays on its side of the line from the shoulder to the wrist: it may cross
    only where the arm is straight (where its two possible places meet), over whole
    melodies. The cellist's left elbow used to flip to its mirror image, up by the head,
    whenever the hand went down the fingerboard: a jump of a third of the frame between two
    frames of a bent arm."""
    for i in range(4):
        notes = random_melody(instrument, seed=i, seconds=20).notes
        kp = perform(notes, Body.from_seed(200 + i, instrument), _frames(notes), VideoSpec()).keypoints
        for shoulder, elbow, wrist in ((2, 3, 4), (5, 6, 7)):
            upper, line = kp[:, elbow] - kp[:, shoulder], kp[:, wrist] - kp[:, shoulder]
            side = np.sign(upper[:, 0] * line[:, 1] - upper[:, 1] * line[:, 0])
            cos = (upper * line).sum(1) / (np.linalg.norm(upper, axis=1) * np.linalg.norm(line, axis=1))
            bend = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))  # 0: a straight arm
            crossed = np.flatnonzero(side[1:] != side[:-1])
            bent = crossed[np.minimum(bend[crossed], bend[crossed + 1]) > 5.0]
            assert len(bent) == 0, (f"{instrument} melody {i}: the elbow {elbow} flips to its mirror image at "
                                    f"frames {bent[:5].tolist()} ({len(bent)} in all), its arm bent "
                                    f"{bend[bent[0]]:.0f} degrees")


def test_two_bone_ik_is_exact_and_keeps_its_side() -> None:
    rng = np.random.default_rng(0)
    root = np.zeros((500, 2))
    target = rng.uniform(-60, 60, size=(500, 2))
    elbow, wrist = two_bone_ik(root, target, 30.0, 25.0, pole=(0.0, -1.0))
    assert np.allclose(np.linalg.norm(elbow - root, axis=1), 30.0)
    assert np.allclose(np.linalg.norm(wrist - elbow, axis=1), 25.0)
    reach = np.linalg.norm(target, axis=1)
    ok = (reach > 5.01) & (reach < 54.99)
    assert np.allclose(wrist[ok], target[ok])


def test_identity_seed_fixes_the_look_and_the_picture() -> None:
    notes = random_melody("cello", seed=1, seconds=2).notes
    frames = []
    for seed in (7, 7, 8):
        body = Body.from_seed(seed, "cello")
        perf = perform(notes, body, 10)
        frames.append(PerformerRenderer(body, Look.from_seed(seed), perf, 256, 256).render(5))
    assert frames[0].shape == (256, 256, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0], frames[2])
    assert Body.from_seed(7, "cello") != Body.from_seed(8, "cello")


def test_bow_position_is_causal_in_the_notes() -> None:
    """Where the bow is at time t depends only on the notes heard by t: how long the
    sounding note will last, and the notes after it, change nothing before they happen."""
    notes = random_melody("cello", seed=7, seconds=12).notes
    t = np.arange(_frames(notes)) / FPS
    b = bow_position(notes, t)
    k = len(notes) // 2
    cut = notes[k].onset + 0.5 * notes[k].duration  # halfway through note k
    longer = [*notes[:k], Note(notes[k].onset, notes[k].duration * 1.7, notes[k].pitch, notes[k].velocity)]
    b2 = bow_position(longer, t)
    before = t <= cut
    assert np.array_equal(b[before], b2[before])
    later = t > notes[k].onset + notes[k].duration + 0.1  # past the original end: the longer stroke went on
    assert not np.allclose(b[later], b2[later])


# --------------------------------------------------------------------------- instrument points


def _ipoints(perf: object, video: VideoSpec, instrument: str) -> dict[str, np.ndarray]:
    """The instrument points of a performance in pixels, by name."""
    pts = perf.instrument_points * np.array([video.width, video.height])  # type: ignore[attr-defined]
    return {n: pts[:, k] for k, n in enumerate(instrument_point_names(instrument))}


def test_cello_bow_points_move_with_the_bowing_hand() -> None:
    # one string (D: pitches 50..56), the performer swaying and leaning as usual
    notes = [Note(0.2 + 0.4 * i, 0.35, 50 + (i * 3) % 7, 60 + 5 * (i % 8)) for i in range(16)]
    body = Body.from_seed(5, "cello")
    video = VideoSpec()
    perf = perform(notes, body, _frames(notes), video)
    assert perf.instrument_points.shape == (len(perf.times), 5, 2)
    p = _ipoints(perf, video, "cello")
    cm = perf.px_per_cm * body.size  # pixels per body-cm
    bow = p["bow_tip"] - p["bow_frog"]
    length = np.linalg.norm(bow, axis=-1)
    assert np.allclose(length, 72.0 * cm, atol=1e-3)  # a rigid bow
    # the bow is held between the middle finger and the thumb of the right hand
    hand = perf.keypoints[:, RIGHT_HAND.start:RIGHT_HAND.stop] * np.array([video.width, video.height])
    hold = 0.5 * (hand[:, 10] + hand[:, 4])
    assert np.abs(p["bow_frog"] - hold).max() < 1e-3
    assert np.linalg.norm(p["bow_frog"] - hand[:, 0], axis=-1).max() < 12.0 * cm  # within a hand of the wrist
    # the bow slides along its own axis by exactly the bow position (motion.npz's bow_position):
    # its frog sits bow_position cm before the contact point, which stays put on the string
    u = bow / length[:, None]
    along = np.sum((p["bridge"] - p["bow_frog"]) * u, axis=-1)
    b = perf.state["bow_position"]
    slope, offset = np.polyfit(b, along, 1)
    assert slope == pytest.approx(perf.px_per_cm, rel=1e-6)  # bow positions are world cm
    assert np.abs(along - (slope * b + offset)).max() < 1e-3
    # ... so the bow turns round at the onsets, exactly where the wrist does
    wrist_along = np.sum(hand[:, 0] * u[0], axis=-1)
    frog_along = np.sum(p["bow_frog"] * u[0], axis=-1)
    onsets = np.array([n.onset for n in notes]) * FPS
    revs = _reversal_frames(-along, eps=1e-3)  # float32 points: ~1e-5 px of rounding
    assert len(revs) >= len(notes) - 1
    for r in revs:
        assert np.min(np.abs(onsets - r)) <= 1.0, f"the bow turns at frame {r}, not at an onset"
    for r in _reversal_frames(wrist_along, eps=1e-3):
        assert np.min(np.abs(np.array(revs) - r)) <= 1, "the wrist turns where the bow does not"
    assert np.sign(np.diff(frog_along)[revs[0] + 1]) == np.sign(np.diff(wrist_along)[revs[0] + 1])


def test_cello_body_points_sway_about_the_endpin() -> None:
    notes = random_melody("cello", seed=2, seconds=8).notes
    body = Body.from_seed(11, "cello")
    video = VideoSpec()
    perf = perform(notes, body, _frames(notes), video)
    p = _ipoints(perf, video, "cello")
    assert np.abs(p["endpin"] - p["endpin"][0]).max() < 1e-3  # the endpin stays on the floor
    up = p["scroll"] - p["endpin"]
    for name in ("bridge", "scroll"):  # a rigid cello: fixed distances from the endpin, on its axis
        d = np.linalg.norm(p[name] - p["endpin"], axis=-1)
        assert d.max() - d.min() < 1e-3
        cross = up[:, 0] * (p[name] - p["endpin"])[:, 1] - up[:, 1] * (p[name] - p["endpin"])[:, 0]
        assert np.abs(cross).max() / np.linalg.norm(up, axis=-1).min() < 1e-3
    # it leans by the body's tilt plus a share of the upper body's sway (the angle from vertical)
    lean = np.arctan2(up[:, 0], -up[:, 1])
    sway = perf.state["sway"]
    assert np.ptp(sway) > 0.01
    assert np.ptp(lean - 0.7 * sway) < 1e-6
    assert float(np.mean(lean - 0.7 * sway)) == pytest.approx(np.radians(body.tilt_deg), abs=1e-6)


def test_trombone_slide_crook_follows_the_position_table() -> None:
    # held notes in each of the seven positions, in a shuffled order
    pitches = {1: 46, 2: 45, 3: 44, 4: 43, 5: 42, 6: 41, 7: 40}
    order = [3, 7, 1, 5, 2, 6, 4]
    notes = [Note(0.3 + 0.8 * i, 0.6, pitches[pos], 80) for i, pos in enumerate(order)]
    assert [trombone_position(n.pitch) for n in notes] == order
    body = Body.from_seed(9, "trombone")
    video = VideoSpec()
    perf = perform(notes, body, _frames(notes), video)
    p = _ipoints(perf, video, "trombone")
    cm = perf.px_per_cm * body.size
    d = perf.geometry["slide_dir"]
    reach = {}
    for n, pos in zip(notes, order, strict=True):
        f = int(round((n.onset + 0.3) * FPS))  # while the note sounds
        reach[pos] = float((p["slide_crook"][f] - p["mouthpiece"][f]) @ d[f])
        # the crook sits at the end of the outer slide: the hand's reach plus the outer tubes
        want = ((24.0 + slide_extension_cm(pos)) * SLIDE_FORESHORTEN - 3.0 + 62 * SLIDE_FORESHORTEN + 2.5 - 2.0) * cm
        assert reach[pos] == pytest.approx(want, abs=1e-3)
    assert all(reach[a] < reach[a + 1] for a in range(1, 7))  # its extension orders like the positions
    # the bell section is held by the left hand at the lips: rigid with the left hand's hold
    hand = perf.keypoints[:, LEFT_HAND.start:LEFT_HAND.stop] * np.array([video.width, video.height])
    hold = 0.5 * (hand[:, 6] + hand[:, 14])
    for name in ("mouthpiece", "bell"):
        dist = np.linalg.norm(p[name] - hold, axis=-1)
        assert dist.max() - dist.min() < 1e-3, f"the {name} moves against the left hand"
    nose = perf.keypoints[:, 0] * np.array([video.width, video.height])
    assert np.linalg.norm(p["mouthpiece"] - nose, axis=-1).max() < 8.0 * cm  # at the lips


# --------------------------------------------------------------------------- part-label maps

_AFTER = {  # parts drawn over the bow / the slide
    "cello": ("right_upper_arm", "right_forearm", "right_hand"),
    "trombone": ("right_hand", "left_upper_arm", "left_forearm", "left_hand"),
}


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_part_maps_label_the_visible_parts(instrument: str) -> None:
    video = VideoSpec(height=64, width=64)
    notes = random_melody(instrument, seed=4, seconds=3).notes
    tool = "bow" if instrument == "cello" else "slide"
    a, b = ("bow_frog", "bow_tip") if instrument == "cello" else ("mouthpiece", "slide_crook")
    allowed = {LABEL[tool]} | {LABEL[n] for n in _AFTER[instrument]}
    for seed in (3, 4):
        body = Body.from_seed(seed, instrument)
        perf = perform(notes, body, 40, video)
        r = PerformerRenderer(body, Look.from_seed(seed), perf, video.width, video.height)
        p = _ipoints(perf, video, instrument)
        for i in (0, 17, 39):
            plain = r.render(i)
            img, lab = r.render_parts(i)
            assert lab.shape == (64, 64) and lab.dtype == np.uint8
            assert np.array_equal(img, plain)  # drawing the map changes no colour pixel
            assert lab[[0, 0, -1, -1], [0, -1, 0, -1]].tolist() == [0, 0, 0, 0]  # corners: the room
            assert int(lab.max()) < len(PART_LABELS)
            # the bow / slide line between its points is labelled as the tool (or what covers it)
            ts = np.linspace(0.1, 0.9, 40)
            line = p[a][i] + ts[:, None] * (p[b][i] - p[a][i])
            inside = (line >= 0).all(axis=1) & (line[:, 0] < 64) & (line[:, 1] < 64)
            cols, rows = line[inside, 0].astype(int), line[inside, 1].astype(int)  # the pixels holding the line
            assert len(cols) >= 10
            got = lab[rows, cols]
            assert np.mean(got == LABEL[tool]) > 0.4, f"{instrument} seed {seed} frame {i}: {got.tolist()}"
            pad = np.pad(lab, 1)  # a one-pixel line may pass a pixel beside the one holding the point
            for y, x in zip(rows, cols, strict=True):
                assert allowed & set(pad[y:y + 3, x:x + 3].ravel().tolist()), f"no {tool} near ({x}, {y})"
            # every labelled part shows up in the picture: its pixels differ from the plate
            diff = np.abs(img.astype(int) - r.background.astype(int)).max(axis=-1)
            drawn = cv2.dilate((lab > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # + anti-aliased rims
            assert np.all(diff[~drawn] == 0)  # the background label is the untouched plate
            for k in np.unique(lab[lab > 0]):
                assert np.median(diff[lab == k]) > 8, f"{PART_LABELS[k]} looks like the plate"
            want = {"head", "torso", "legs", "instrument_body", tool, "left_hand", "right_hand"}
            assert want <= {PART_LABELS[k] for k in np.unique(lab)}
