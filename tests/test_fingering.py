"""The fingering state: the pitch heard sets the cellist's string and stop by the players' rule,
and the trombonist's slide by the chart."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import music_signal

from letsplay.export.onnx import export_onnx
from letsplay.models.data.instruments import CELLO_STRINGS, TROMBONE_POSITIONS, cello_stop_fraction
from letsplay.models.data.performer_motion import cello_fingering, slide_timeline
from letsplay.models.data.scores import Note
from letsplay.models.features import CQT, frame_windows, frames_available
from letsplay.models.fingering import (
    fingering_init,
    fingering_read,
    fingering_step,
    fingering_values,
    heard_pitch,
    pitch_classes,
)
from letsplay.models.performer import Performer
from letsplay.models.presets import ablate, preset
from letsplay.models.stepping import feeds, next_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sure(pitch: int, low: int, n: int) -> torch.Tensor:
    logits = torch.full((1, n), -10.0)
    logits[0, pitch - low] = 10.0
    return logits


def test_fingering_follows_the_players_rule() -> None:
    """Fed each note's pitch with confidence, the state takes the synthetic cellist's string
    for every note and its stop for every stopped note; an open string leaves the stop."""
    low, n = pitch_classes("cello")
    pitches = np.random.default_rng(3).integers(36, 82, 400)
    ref = cello_fingering([Note(float(i), 0.5, int(p), 80) for i, p in enumerate(pitches)])
    st = fingering_init(1)
    rest = fingering_values(st, "cello")[0]
    assert rest.tolist() == pytest.approx([-1.0, 2.0, cello_stop_fraction(52, 2)])
    stop = float(rest[2])
    for i, p in enumerate(pitches):
        st = fingering_step(_sure(int(p), low, n), st, low, "cello")
        v = fingering_values(st, "cello")[0]
        if ref.semitones[i] > 0:
            stop = float(ref.stop[i])
        assert int(v[0]) == p and int(v[1]) == ref.string[i], i
        assert float(v[2]) == pytest.approx(stop, abs=1e-6), i
        assert fingering_read(st, "cello")[0].tolist() == pytest.approx([ref.string[i] / 3, stop], abs=1e-6)
    assert {int(s) for s in ref.string} == {0, 1, 2, 3}  # every string was played
    assert (ref.semitones == 0).sum() > 5  # and open strings, which hold the stop


def test_fingering_holds_without_a_confident_new_pitch() -> None:
    low, n = pitch_classes("cello")
    st = fingering_step(_sure(62, low, n), fingering_init(1), low, "cello")  # D4 -> the A string, 5 semitones up
    assert fingering_values(st, "cello")[0].tolist() == pytest.approx([62.0, 3.0, 1 - 2 ** (-5 / 12)])
    flat = torch.zeros(1, n)  # nothing named: 1 / n each
    assert torch.equal(fingering_step(flat, st, low, "cello"), st)
    unsure = torch.zeros(1, n)
    unsure[0, 45 - low] = 0.5 * np.log(n)  # the likeliest, but below the confidence
    assert torch.equal(fingering_step(unsure, st, low, "cello"), st)
    # G3 lies below the open A: the D string, 5 semitones up
    st2 = fingering_step(_sure(55, low, n), st, low, "cello")
    assert fingering_values(st2, "cello")[0].tolist() == pytest.approx([55.0, 2.0, 1 - 2 ** (-5 / 12)])
    # from the D string, A3 (the open A) is kept on the D string, 7 semitones up; B3 is not
    st3 = fingering_step(_sure(CELLO_STRINGS[2] + 7, low, n), st2, low, "cello")
    assert int(fingering_values(st3, "cello")[0, 1]) == 2
    st4 = fingering_step(_sure(CELLO_STRINGS[2] + 9, low, n), st2, low, "cello")
    assert fingering_values(st4, "cello")[0].tolist() == pytest.approx([59.0, 3.0, 1 - 2 ** (-2 / 12)])


def test_heard_pitch_is_the_latest_note_at_the_newest_audio() -> None:
    notes = [(0.5, 0.4, 48, 80), (1.0, 0.5, 90, 80), (1.5, 0.3, 40, 80)]  # the middle one out of range
    low, n = pitch_classes("cello")
    y = heard_pitch(notes, 60, 30.0, 0.1, low, n)
    t = np.arange(60) / 30.0 + 0.1
    assert (y[t < 0.5] == -1).all()
    assert (y[(t >= 0.5 + 1e-6) & (t < 1.0)] == 48 - low).all()
    assert (y[(t >= 1.0 + 1e-6) & (t < 1.5)] == -1).all()
    assert (y[t >= 1.5 + 1e-6] == 40 - low).all()
    assert (heard_pitch(None, 10, 30.0, 0.0, low, n) == -1).all()


def test_slide_follows_the_chart() -> None:
    """Fed each note's pitch with confidence, the trombonist's state takes the chart's slide
    position for every note (the synthetic trombonist's, from its motion); an unsure or
    unchanged pitch leaves it where it is."""
    low, n = pitch_classes("trombone")
    st = fingering_init(1)
    assert fingering_values(st, "trombone")[0].tolist() == [-1.0, 1.0, 0.0]
    pitches = np.random.default_rng(4).integers(low, low + n, 300)
    notes = [Note(float(i), 0.5, int(p), 80) for i, p in enumerate(pitches)]
    slide, _ = slide_timeline(notes, np.arange(len(notes)) + 0.25)  # mid-note: each note's own position
    for i, p in enumerate(pitches):
        st = fingering_step(_sure(int(p), low, n), st, low, "trombone")
        v = fingering_values(st, "trombone")[0]
        assert int(v[0]) == p and float(v[1]) == pytest.approx(slide[i]) == TROMBONE_POSITIONS[int(p)], i
        assert fingering_read(st, "trombone")[0].tolist() == pytest.approx([(slide[i] - 1) / 6, 0.0])
    assert set(slide.astype(int)) == set(range(1, 8))  # every position was taken
    unsure = torch.zeros(1, n)
    unsure[0, 0] = 0.5 * np.log(n)
    assert torch.equal(fingering_step(unsure, st, low, "trombone"), st)


def test_both_performers_have_a_fingering_state() -> None:
    from letsplay.models.fingering import check_instrument

    for instrument in ("cello", "trombone"):
        assert preset("realtime", instrument).khp.pitch_detector > 0
        assert preset("tiny", instrument).khp.pitch_detector > 0
        assert ablate(preset("realtime", instrument), "kp_no_fingering").khp.pitch_detector == 0
    with pytest.raises(ValueError, match="violin.*pitch_detector=0"):
        check_instrument("violin")


@pytest.mark.parametrize("instrument", ["cello", "trombone"])
def test_fingering_drives_the_readout_and_exports(tmp_path, instrument) -> None:
    """A pitch detector sure of itself moves the fingering on music; the readout reads the
    fingering (the string and stop, the slide); step equals sequence, and the exported KHP carries the state."""
    torch.manual_seed(0)
    p = Performer(preset("tiny", instrument)).eval()
    k = p.khp
    with torch.no_grad():
        k.pitch.out.weight.mul_(60.0)  # an untrained detector made decisive: its answers vary with the sound
        k.pitch.out.bias.zero_()
        k.fc.weight.normal_(0.0, 0.1)  # a readout that reads its inputs (a fresh one starts at the mean pose)
    x = music_signal(2.2, seed=5)
    cqt = CQT(p.cfg.audio)
    with torch.inference_mode():
        cols = cqt(torch.from_numpy(x))
    n = min(frames_available(len(x), cqt, p.cfg.video), 60)
    w = frame_windows(cols, p.cfg.audio, p.cfg.video, n)  # [n, 84, 87]
    with torch.inference_mode():
        seq, last = k.forward(w[None], with_heatmap=False)
        st = k.init_state(1)
        fing, kps = [], []
        for t in range(n):
            o, st = k.step(w[t:t + 1], st, with_heatmap=False)
            fing.append(fingering_values(st.fingering, instrument)[0].clone())
            kps.append(o.keypoints)
    fing = torch.stack(fing)
    assert len({float(v) for v in fing[:, 0]}) >= 3  # several pitches heard, the state moved
    assert torch.allclose(torch.cat(kps), seq.keypoints[0], atol=1e-6)
    assert torch.equal(last.fingering, st.fingering)
    # the readout reads the fingering: a detector that names nothing leaves it at rest, and the pose differs
    decisive = k.pitch.out.weight.detach().clone()
    with torch.no_grad():
        k.pitch.out.weight.zero_()
        still, _ = k.forward(w[None], with_heatmap=False)
        k.pitch.out.weight.copy_(decisive)
    moved = (fing[:, 1:] != fingering_values(fingering_init(1), instrument)[0, 1:]).any(dim=1)
    diff = (still.keypoints[0] - seq.keypoints[0]).abs().amax(dim=(1, 2))
    assert moved.any() and bool((diff[moved] > 1e-4).all()) and bool((diff[~moved] < 1e-6).all())

    out = tmp_path / "export"
    export_onnx(p, out)
    sess = ort.InferenceSession(str(out / "khp.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    tstate = p.init_state(1)
    worst, heard = 0.0, set()
    for t in range(n):
        state = {kk: v.numpy() for kk, v in tstate.khp.to_dict("khp.").items()}
        with torch.inference_mode():
            ref, tstate = p.step(w[t:t + 1], tstate)
        o = dict(zip(names, sess.run(None, feeds({"window": w[t:t + 1].numpy()}, state)), strict=True))
        heard.add(float(fingering_values(tstate.khp.fingering, instrument)[0, 0]))
        new = {kk: v.numpy() for kk, v in tstate.khp.to_dict("khp.").items()}
        for kk, v in next_state(o, state).items():
            worst = max(worst, float(np.abs(v - new[kk]).max()))
        worst = max(worst, float(np.abs(o["keypoints"] - ref.keypoints.numpy()).max()))
    assert "khp.fingering" in tstate.khp.to_dict("khp.") and len(heard) >= 3
    assert worst <= 1e-4
