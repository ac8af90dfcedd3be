"""KHP that follows the music: the streaming audio encoder, the motion heads and their targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from letsplay.models.data.performer_motion import plan_bow
from letsplay.models.data.scores import Note
from letsplay.models.keypoints import MOTION_CHANNELS, ONSET_POS_WEIGHT, KeypointConfig, KeypointPredictor, motion_loss
from letsplay.models.motion_targets import bow_direction, motion_targets, onset_frames
from letsplay.models.presets import ablate, preset
from letsplay.models.spec import VideoSpec
from letsplay.models.streaming_encoder import StreamingAudioEncoder, chunk_columns

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _windows(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 84, 87, generator=g) * 4


@pytest.mark.parametrize("name", ["tiny", "realtime"])
def test_streaming_encoder_equals_offline_for_any_chunking(name: str) -> None:
    cfg = preset(name)
    torch.manual_seed(1)
    enc = StreamingAudioEncoder(cfg.audio, cfg.video, cfg.khp.stream_channels, cfg.khp.audio_features,
                                cfg.khp.stream_layers)
    w = _windows(2, 41)
    with torch.no_grad():
        offline, last = enc.sequence(w)
        rng = np.random.default_rng(0)
        for _ in range(4):  # random splits of the sequence into parts, state carried between them
            cuts = sorted(set(rng.integers(1, 41, size=rng.integers(1, 6)).tolist()))
            parts, st = [], enc.init_state(2)
            for a, b in zip([0, *cuts], [*cuts, 41], strict=True):
                f, st = enc.sequence(w[:, a:b], st)
                parts.append(f)
            assert torch.allclose(torch.cat(parts, 1), offline, atol=1e-5)
            assert torch.allclose(st.history, last.history, atol=1e-5)
        st, steps = enc.init_state(2), []
        for t in range(41):  # frame by frame, as the engine runs it
            f, st = enc.step(w[:, t], st)
            steps.append(f)
    assert torch.allclose(torch.stack(steps, 1), offline, atol=1e-5)
    assert offline.abs().mean() > 0.01  # a real output, not zeros


def test_streaming_encoder_reads_only_the_newest_columns() -> None:
    """Each frame reads its chunk of newest columns (and the one before, for the flux):
    older columns of the window cannot change the output -- they were read by earlier frames."""
    cfg = preset("tiny")
    enc = StreamingAudioEncoder(cfg.audio, cfg.video, 16, 32, 2)
    assert enc.chunk == chunk_columns(cfg.audio, cfg.video) == 6  # 172.3 columns/s at 30 fps
    w = _windows(1, 1)[:, 0]
    w2 = w.clone()
    w2[..., : -enc.chunk - 1] = 0.0
    st = enc.init_state(1)
    with torch.no_grad():
        assert torch.equal(enc.step(w, st)[0], enc.step(w2, st)[0])
        w2[..., -1] += 1.0
        assert not torch.equal(enc.step(w, st)[0], enc.step(w2, st)[0])
    assert chunk_columns(cfg.audio, VideoSpec(fps=60.0)) == 3


def test_khp_with_motion_heads_step_equals_forward_and_sizes() -> None:
    cfg = preset("realtime")
    torch.manual_seed(0)
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    torch.nn.init.normal_(khp.fc.weight, std=0.01)
    w = _windows(2, 20)
    with torch.no_grad():
        seq, last = khp(w, with_heatmap=False)
        st = khp.init_state(2)
        for t in range(20):
            o, st = khp.step(w[:, t], st, with_heatmap=False)
            assert torch.allclose(o.keypoints, seq.keypoints[:, t], atol=1e-5)
            assert torch.allclose(o.motion, seq.motion[:, t], atol=1e-5)
    for k, v in st.to_dict().items():
        assert torch.allclose(v, last.to_dict()[k], atol=1e-5), k
    assert seq.motion.shape == (2, 20, len(MOTION_CHANNELS))
    assert set(seq.motion[..., 1].unique().tolist()) <= {0.0, 1.0}  # the direction is exact in use
    assert ((seq.motion[..., 2] >= 0) & (seq.motion[..., 2] <= 1)).all()  # travel stays on the bow


def _khp_hearing(onset_logit: float) -> KeypointPredictor:
    """A tiny KHP whose onset detector says ``onset_logit`` on every frame."""
    cfg = preset("tiny")
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    assert khp.onset is not None
    with torch.no_grad():
        khp.onset.out.weight.zero_()
        khp.onset.out.bias.fill_(onset_logit)
    return khp


def test_direction_state_flips_on_onsets() -> None:
    """The bow direction flips where the onset probability rises through 1/2 -- once per
    onset, also when a detection spans two frames -- and holds otherwise."""
    cfg = preset("tiny")
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    F = cfg.khp.audio_features
    with torch.no_grad():
        heard = [1, 0, 1, 1, 0, 0, 1, 0]  # onsets at 0, 2 (held over frame 3) and 6
        st, q = khp.init_state(1), []
        for h in heard:  # the onset detector's logit: +50 on an onset frame, -50 elsewhere
            out, st = khp._after_encoder(torch.zeros(1, F), st, None, False,
                                         onset_logit=torch.tensor([[100.0 * h - 50.0]]))
            q.append(out.motion[0, 1].item())
    assert q == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    with torch.no_grad():
        out, _ = _khp_hearing(30.0)(_windows(1, 4), with_heatmap=False)  # always "onset": one flip only
    assert out.motion[0, :, 1].tolist() == [1.0, 1.0, 1.0, 1.0]
    with torch.no_grad():
        out, _ = _khp_hearing(-30.0)(_windows(1, 4), with_heatmap=False)  # no onset: the direction holds
    assert out.motion[0, :, 1].tolist() == [0.0] * 4


def test_state_readout_holds_the_regressions_and_keeps_the_bow_arm_off_the_lstm() -> None:
    """``state_readout``: the string / stop (slide) regressions are read as they were at the
    last onset, following them until the first one; and the bowing arm is a function of the
    motion states alone -- two different LSTM states with the same states read give the
    same right elbow, wrist and hand, while the rest of the body still reads the LSTM."""
    from letsplay.models.keypoints import STATE_READ_POINTS

    cfg = preset("tiny")
    assert cfg.khp.state_readout
    torch.manual_seed(3)
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    with torch.no_grad():
        for p in (khp.fc.weight, khp.decoder[-1].weight, khp.heads.weight):
            p.normal_(0.0, 0.3)
    F = cfg.khp.audio_features
    heard = [0, 0, 1, 0, 0, 0, 1, 0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        st, raw, read = khp.init_state(1), [], []
        for h in heard:  # a new audio feature every frame: the regressions move every frame
            out, st = khp._after_encoder(torch.randn(1, F, generator=g), st, None, False,
                                         onset_logit=torch.tensor([[100.0 * h - 50.0]]))
            raw.append(out.motion[0, 3:5].clone())
            read.append(st.held[0, :2].clone())
    for t in range(len(heard)):
        last = max([i for i in range(t + 1) if heard[i]], default=None)
        want = raw[t] if last is None else raw[last]  # before the first onset: follows
        assert torch.equal(read[t], want), t
    assert not torch.equal(raw[3], raw[4])  # the regressions did move between onsets
    # the bowing arm reads the states only
    mt = torch.full((1, len(MOTION_CHANNELS)), float("nan"))
    mt[0, 1:5] = torch.tensor([1.0, 0.3, 0.6, 0.2])
    a, b = khp.init_state(1), khp.init_state(1)
    b = b.__class__(**{**b.__dict__, "lstm_h": torch.randn(1, cfg.khp.hidden, generator=g),
                       "lstm_c": torch.randn(1, cfg.khp.hidden, generator=g)})
    with torch.no_grad():
        feat = torch.randn(1, F, generator=g)
        oa, _ = khp._after_encoder(feat, a, None, False, motion_teacher=mt, onset_logit=torch.tensor([[-50.0]]))
        ob, _ = khp._after_encoder(feat, b, None, False, motion_teacher=mt, onset_logit=torch.tensor([[-50.0]]))
    arm = list(STATE_READ_POINTS)
    assert torch.equal(oa.keypoints[0, arm], ob.keypoints[0, arm])
    rest = [i for i in range(67) if i not in arm]
    assert (oa.keypoints[0, rest] - ob.keypoints[0, rest]).abs().max() > 1e-3


def test_reset_where_restarts_only_those_rows() -> None:
    cfg = preset("tiny")
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    with torch.no_grad():
        _, st = khp(_windows(3, 5), with_heatmap=False)
    r = khp.reset_where(st, torch.tensor([True, False, True]))
    init = khp.init_state(3).to_dict()
    for k, v in r.to_dict().items():
        assert torch.equal(v[[0, 2]], init[k][[0, 2]]), k
        assert torch.equal(v[1], st.to_dict()[k][1]), k


def test_motion_targets_from_notes_and_physics() -> None:
    notes = [(0.10, 0.4, 48, 90), (0.50, 0.3, 50, 80), (1.00, 0.5, 50, 70)]
    fps = 30.0
    on = onset_frames(np.array([n[0] for n in notes]), 45, fps)
    assert np.flatnonzero(on).tolist() == [3, 15, 30]  # 0.1 s is in (2/30, 3/30]; 0.5 in (14/30, 15/30]
    ns = [Note(*n) for n in notes]
    d = bow_direction(ns, 45, fps)
    assert d[:3].tolist() == [0, 0, 0] and d[3] == 1 and d[14] == 1 and d[15] == 0 and d[30] == 1
    assert plan_bow(ns)[1].tolist() == [1.0, -1.0, 1.0]
    motion = {"bow_position": np.linspace(8.0, 50.0, 45), "bow_string": np.full(45, 3.0),
              "stop_fraction": np.full(45, 0.25), "bowing": np.ones(45, bool)}
    v, m = motion_targets("cello", notes, motion, 45, fps)
    assert m.min() == 1.0
    assert v[0, 2] == 0.0 and v[-1, 2] == 1.0 and np.allclose(v[:, 3], 1.0) and np.allclose(v[:, 4], 0.25)
    tv, tm = motion_targets("trombone", notes, {"slide_position": np.full(45, 4.0), "loudness": np.full(45, 0.5),
                                                "playing": np.zeros(45, bool)}, 45, fps)
    assert tm[:, 1].max() == 0 and tm[:, 2].max() == 0  # no bow: direction and travel do not count
    assert np.allclose(tv[:, 3], 0.5) and np.allclose(tv[:, 4], 0.5) and tv[:, 5].max() == 0
    nv, nm = motion_targets("cello", None, None, 45, fps)  # a prepared video: nothing to learn from
    assert nm.max() == 0 and nv.max() == 0


def test_motion_loss_counts_only_unmasked_channels() -> None:
    real = torch.zeros(2, 4, 6)
    pred = torch.zeros(2, 4, 6)
    pred[..., 1] = 0.5
    mask = torch.zeros(2, 4, 6)
    assert motion_loss(pred, real, mask).item() == 0.0
    mask[..., 2] = 1.0
    pred[..., 2] = 0.25
    assert motion_loss(pred, real, mask).item() == pytest.approx(0.25)
    mask[..., 1] = 1.0
    assert motion_loss(pred, real, mask).item() == pytest.approx(0.25 + 0.5, rel=1e-4)
    only_onset = torch.zeros(2, 4, 6)
    only_onset[..., 0] = 1.0
    hit, miss = torch.zeros(2, 4, 6), torch.zeros(2, 4, 6)
    miss[..., 0] = 1.0  # logit 0 where a real onset is: as unsure as on the frames without one
    assert motion_loss(hit, miss, only_onset).item() == pytest.approx(ONSET_POS_WEIGHT * np.log(2), rel=1e-5)
    assert motion_loss(hit, hit, only_onset).item() == pytest.approx(np.log(2), rel=1e-5)


def test_paper_kp_stays_available() -> None:
    rt = preset("realtime")
    assert rt.khp.encoder == "streaming" and rt.khp.motion_heads
    paper = ablate(rt, "kp_paper").khp
    assert paper.encoder == "window" and not paper.motion_heads and paper.avg_condition and paper.dlt_loss
    assert preset("paper").khp.encoder == "window" and not preset("paper").khp.motion_heads
    khp = KeypointPredictor(paper, rt.audio, rt.work_size)
    out, st = khp(_windows(1, 3))
    assert out.motion is None and set(st.to_dict()) == {"lstm_h", "lstm_c"}


def test_teacher_onsets_drive_the_direction_state_where_given() -> None:
    cfg = preset("tiny")
    khp = _khp_hearing(-30.0)  # the head hears no onset
    w = _windows(2, 4)
    with torch.no_grad():
        teacher = torch.tensor([[1.0, 0.0, 1.0, 1.0], [float("nan")] * 4])  # row 0 forced, row 1 the head's
        out, _ = khp(w, with_heatmap=False, teacher=teacher)
    assert out.motion[0, :, 1].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0], abs=1e-6)
    assert out.motion[1, :, 1].tolist() == pytest.approx([0.0] * 4, abs=1e-6)
    assert (out.motion[..., 0] < -20).all()  # the head's own onset logits are still what it outputs
    paper = KeypointPredictor(ablate(cfg, "kp_paper").khp, cfg.audio, cfg.work_size)
    with pytest.raises(ValueError, match="no motion heads"):
        paper(w, teacher=teacher)


def test_max_flux_hears_an_onset_but_not_a_vibrato() -> None:
    """SuperFlux: energy that moves to the neighbouring bin (a vibrato's wobble) gives no
    flux against the previous column's neighbourhood maximum; a new note does."""
    cfg = preset("tiny")
    enc = {f: StreamingAudioEncoder(cfg.audio, cfg.video, 16, 32, 2, flux=f) for f in ("plain", "max")}
    w = torch.zeros(1, 84, 87)
    w[0, 40, :-1] = 5.0
    wobble, note = w.clone(), w.clone()
    wobble[0, 40, -1], wobble[0, 41, -1] = 0.0, 5.0  # the tone moved up one bin
    note[0, 60, -1] = 5.0  # a new tone
    for name, window in (("wobble", wobble), ("note", note)):
        for f, e in enc.items():
            flux = e.columns_and_flux(window)[1]
            assert (flux.sum().item() > 0) == (name == "note" or f == "plain"), (name, f)
            assert flux[..., :-1].abs().max() == 0  # the steady columns before: no flux


def test_teacher_motion_reaches_only_the_readout() -> None:
    """Real motion states given to the readout change the keypoints -- through the motion
    decoder, which reads them -- but not the states the model carries and outputs; the
    keypoint loss then trains the readout, not the travel state's speed."""
    cfg = preset("tiny")
    assert cfg.khp.motion_decoder > 0 and preset("realtime").khp.motion_decoder > 0
    torch.manual_seed(0)
    khp = KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, cfg.instrument, cfg.video)
    torch.nn.init.normal_(khp.decoder[-1].weight, std=0.1)
    w = _windows(2, 6)
    nan = torch.full((2, 6, len(MOTION_CHANNELS)), float("nan"))
    real = nan.clone()
    real[..., 1] = 1.0  # a down-bow ...
    real[..., 2] = torch.linspace(0.0, 1.0, 6)  # ... from the frog to the tip
    real[1] = float("nan")  # row 1: the model's own states
    with torch.no_grad():
        own, st_own = khp(w, with_heatmap=False)
        same, _ = khp(w, with_heatmap=False, motion_teacher=nan)
        taught, st_taught = khp(w, with_heatmap=False, motion_teacher=real)
    assert torch.equal(same.keypoints, own.keypoints)
    assert torch.equal(taught.motion, own.motion)  # the states are the model's own
    for k, v in st_taught.to_dict().items():
        assert torch.equal(v, st_own.to_dict()[k]), k
    assert torch.equal(taught.keypoints[1], own.keypoints[1])
    moved = (taught.keypoints[0] - own.keypoints[0]).abs().amax(dim=(1, 2))
    assert (moved > 1e-4).all()  # every frame of row 0 reads the real travel
    assert (taught.keypoints[0, 1:] - taught.keypoints[0, :-1]).abs().amax() > 1e-4  # ... which moves

    real[1] = real[0]
    out, _ = khp(w, with_heatmap=False, motion_teacher=real)
    khp.zero_grad()
    khp.loss(out.keypoints, torch.rand_like(out.keypoints))["kp"].backward()
    assert khp.decoder[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in khp.speed.parameters())

    onset = nan.clone()
    onset[..., 0] = 1.0  # a logit channel: its real values are on another scale
    with pytest.raises(ValueError, match="only the channels"):
        khp(w, motion_teacher=onset)
    with pytest.raises(ValueError, match="motion_decoder"):
        KeypointConfig(motion_heads=False, motion_decoder=8)


def test_motion_smoothness_charges_a_jittering_state_not_an_offset_one() -> None:
    """With ``smooth_weight`` the loss tells a state that wiggles about the right value from
    one that is off by as much but steady: the same L1, only the first pays for its changes."""
    e, w = 0.1, 4.0
    real = torch.zeros(1, 6, len(MOTION_CHANNELS))
    real[..., 2] = 0.5
    mask = torch.zeros_like(real)
    mask[..., 2] = 1.0  # travel only
    jitter, offset = real.clone(), real.clone()
    jitter[0, :, 2] += e * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    offset[0, :, 2] += e
    assert motion_loss(offset, real, mask).item() == pytest.approx(motion_loss(jitter, real, mask).item())
    assert motion_loss(offset, real, mask, w).item() == pytest.approx(e, rel=1e-5)
    assert motion_loss(jitter, real, mask, w).item() == pytest.approx(e + w * 2 * e, rel=1e-5)
    moving = real.clone()
    moving[0, :, 2] = torch.linspace(0.0, 1.0, 6)  # a real stroke: following it costs nothing
    assert motion_loss(moving, moving, mask, w).item() == pytest.approx(0.0, abs=1e-6)


def _run_states(khp: KeypointPredictor, onsets: np.ndarray, sounding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step ``khp`` with its onset detector and sounding head made to hear exactly ``onsets``
    and ``sounding`` (0 / 1 per frame), its bow speed zero: (direction, travel) per frame."""
    F = khp.cfg.audio_features
    with torch.no_grad():
        khp.heads.weight.zero_()
        khp.speed[-1].weight.zero_()
        khp.speed[-1].bias.fill_(-60.0)  # softplus: ~1e-26 of the bow per second
        st, q, s = khp.init_state(1), [], []
        for o, snd in zip(onsets, sounding, strict=True):
            khp.heads.bias[-1] = 50.0 if snd else -50.0  # the sounding logit
            out, st = khp._after_encoder(torch.zeros(1, F), st, None, False,
                                         onset_logit=torch.tensor([[100.0 * float(o) - 50.0]]))
            q.append(out.motion[0, 1].item())
            s.append(out.motion[0, 2].item())
    return np.array(q), np.array(s)


def test_the_bow_retake_follows_the_data_after_a_rest() -> None:
    """The cellist's rest state: fed the notes' own onsets and sounding, the direction state
    is the data's on every frame -- a down-bow after every rest, where reversing at every
    onset (the ablation) goes wrong -- and in silence the travel state glides exactly as the
    data's bow does."""
    from letsplay.models.data.performer_motion import BOW_HI, BOW_LO, bow_position

    cfg = preset("tiny", "cello")
    assert cfg.khp.bow_retake and not preset("tiny", "trombone").khp.bow_retake
    fps, T = cfg.video.fps, 120
    notes = [Note(0.1, 0.5, 50, 100), Note(0.6, 0.5, 52, 100), Note(1.1, 0.9, 53, 110),  # down, up, down
             Note(2.4, 0.5, 55, 90),  # a 0.4 s rest before it: a down-bow again
             Note(3.1, 0.4, 57, 90), Note(3.5, 0.3, 59, 90)]  # 0.2 s, then no gap: up, down
    t = np.arange(T) / fps
    onsets = onset_frames(np.array([n.onset for n in notes]), T, fps)
    sounding = np.zeros(T)
    for n in notes:  # as the data's "bowing" (performer_motion._cello)
        i0, i1 = np.searchsorted(t, [n.onset, n.end])
        sounding[i0:i1] = 1.0
    real = bow_direction(notes, T, fps)
    q, _ = _run_states(KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, "cello", cfg.video), onsets, sounding)
    assert q.tolist() == real.tolist()
    # the sounding head hearing the note after the rest a frame before the onset detector does
    early = sounding.copy()
    early[int(np.flatnonzero(onsets)[3]) - 1] = 1.0
    q, _ = _run_states(KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, "cello", cfg.video), onsets, early)
    assert q.tolist() == real.tolist()
    no = ablate(cfg, "kp_no_retake").khp
    q0, _ = _run_states(KeypointPredictor(no, cfg.audio, cfg.work_size, "cello", cfg.video), onsets, sounding)
    after = t >= 2.4
    assert (q0[~after] == real[~after]).all() and (q0[after] != real[after]).all()  # one rest: the parity is lost
    # silence: the travel state waits BOW_RETAKE_S at mid-bow, then glides as the data's bow
    _, s = _run_states(KeypointPredictor(cfg.khp, cfg.audio, cfg.work_size, "cello", cfg.video),
                       np.zeros(30), np.zeros(30))
    want = (bow_position([], t[:30]) - BOW_LO) / (BOW_HI - BOW_LO)
    assert np.allclose(s, want, atol=1e-5) and s[-1] < 0.45
