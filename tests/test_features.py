"""The CQT front end: streaming equals offline exactly; centered equals nnAudio."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import music_signal

from letsplay.models.features import CQT, StreamingCQT, frame_column, frame_windows, frames_available
from letsplay.models.spec import AudioSpec, VideoSpec


def _stream(spec: AudioSpec, x: np.ndarray, sizes) -> torch.Tensor:
    s = StreamingCQT(spec)
    state = s.init_state(1)
    out, pos, i = [], 0, 0
    with torch.inference_mode():
        while pos < len(x):
            m = sizes(i)
            cols, state = s.step(torch.from_numpy(x[pos: pos + m])[None], state)
            out.append(cols)
            pos, i = pos + m, i + 1
    assert int(state.n_samples) == len(x)
    return torch.cat(out, dim=-1)[0]


@pytest.fixture(scope="module", params=["causal", "centered"])
def offline(request, music):
    spec = AudioSpec(alignment=request.param)
    with torch.inference_mode():
        return spec, CQT(spec)(torch.from_numpy(music))


@pytest.mark.parametrize("chunk", [7, 256, 1000, 4096, "random"])
def test_streaming_equals_offline(offline, music, chunk):
    spec, ref = offline
    rng = np.random.default_rng(1)
    sizes = (lambda i: int(rng.integers(1, 5000))) if chunk == "random" else (lambda i: chunk)
    got = _stream(spec, music, sizes)
    assert got.shape == ref.shape
    assert ref.max() > 1.0  # the signal really excites the transform
    # The same code computes both, in fixed-shape matrix blocks: bit-identical.
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert torch.equal(got, ref)


@pytest.mark.parametrize("alignment", ["causal", "centered"])
def test_streaming_one_sample_at_a_time(alignment):
    spec = AudioSpec(alignment=alignment)
    x = music_signal(0.9, seed=3)
    with torch.inference_mode():
        ref = CQT(spec)(torch.from_numpy(x))
    got = _stream(spec, x, lambda i: 1)
    assert got.shape == ref.shape and ref.shape[-1] > 50
    assert torch.equal(got, ref)


def test_column_count_and_timing():
    spec = AudioSpec()
    c = CQT(spec)
    assert c.ahead == 0  # causal: a column needs nothing after its time
    for n in (0, 1, 255, 256, 257, 44100):
        assert c.n_columns(n) == n // 256 + 1
    cen = CQT(dataclasses.replace(spec, alignment="centered"))
    assert cen.ahead > 0.25 * 44100  # centered must wait ~257 ms for its longest kernel
    assert cen.n_columns(cen.ahead - 1) == 0 and cen.n_columns(cen.ahead) == 1


def test_causal_column_ignores_the_future(music):
    """Changing audio after column j's time leaves columns 0..j unchanged."""
    spec = AudioSpec()
    c = CQT(spec)
    j = 300
    y = music.copy()
    y[j * spec.hop:] = np.random.default_rng(0).standard_normal(len(y) - j * spec.hop)
    with torch.inference_mode():
        a, b = c(torch.from_numpy(music)), c(torch.from_numpy(y))
    assert torch.equal(a[:, : j + 1], b[:, : j + 1])
    assert not torch.equal(a[:, j + 1:], b[:, j + 1:])


def test_centered_matches_nnaudio_interior(music):
    from nnAudio.features.cqt import CQT1992v2

    spec = AudioSpec(alignment="centered")
    ref = CQT1992v2(sr=spec.sample_rate, hop_length=spec.hop, fmin=spec.fmin, n_bins=spec.n_bins,
                    bins_per_octave=spec.bins_per_octave, center=True, pad_mode="reflect",
                    verbose=False)(torch.from_numpy(music))[0]
    with torch.inference_mode():
        ours = CQT(spec)(torch.from_numpy(music))
    # Interior: columns whose kernels lie wholly inside the signal (nnAudio reflect-pads the edges).
    c = CQT(spec)
    lo = -(-c.back // spec.hop)
    hi = ours.shape[-1]
    assert hi - lo > 200
    diff = (ours[:, lo:hi] - ref[:, lo:hi]).abs().max().item()
    assert diff <= 1e-5 * ref.abs().max().item()


def test_log_scaling_is_log1p_of_magnitude(music):
    x = torch.from_numpy(music[:20000])
    with torch.inference_mode():
        mag = CQT(AudioSpec())(x)
        lg = CQT(AudioSpec(scaling="log"))(x)
    assert torch.allclose(lg, torch.log1p(mag))


def test_batch_rows_are_independent(music):
    spec = AudioSpec()
    c = CQT(spec)
    x = torch.from_numpy(music[:30000])
    with torch.inference_mode():
        one = c(x)
        two = c(torch.stack([x, x.flip(0)]))
    assert torch.equal(two[0], one)


def test_frame_windows():
    audio, video = AudioSpec(), VideoSpec()
    assert frame_column(0, audio, video) == 0
    assert frame_column(30, audio, video) == 44100 // 256  # 1 s -> column 172
    la = VideoSpec(lookahead_ms=100)
    assert frame_column(30, audio, la) == int(1.1 * 44100 / 256)
    cqt = torch.arange(84 * 400, dtype=torch.float32).reshape(84, 400)
    w = frame_windows(cqt, audio, video, 60)
    assert w.shape == (60, 84, 87)
    # frame 0: all silence but its newest column 0
    assert torch.equal(w[0, :, -1], cqt[:, 0]) and w[0, :, :-1].abs().sum() == 0
    i = 45
    c = frame_column(i, audio, video)
    assert torch.equal(w[i], cqt[:, c - 86: c + 1])
    with pytest.raises(ValueError, match="more audio"):
        frame_windows(cqt, audio, video, 100)


def test_frames_available_matches_frame_column():
    audio, video = AudioSpec(), VideoSpec()
    c = CQT(audio)
    for n in (0, 1, 1470, 1471, 44100, 100000):
        k = frames_available(n, c, video)
        cols = c.n_columns(n)
        if k:
            assert frame_column(k - 1, audio, video) < cols
            assert (k - 1) / video.fps < n / audio.sample_rate  # audio strictly past the frame's time
        assert k == int(np.ceil(n / audio.sample_rate * video.fps))  # causal: the time rule decides
    assert frames_available(44100 * 60, c, video) == 1800  # 60 s of audio: 60 s of video
    centered = CQT(AudioSpec(alignment="centered"))
    assert frames_available(44100, centered, video) < 30  # must wait for its lookahead


@pytest.mark.parametrize("alignment", ["causal", "centered"])
def test_equals_exact_kernel_products(music, alignment):
    """The segment-DFT evaluation gives the dot products of the exact (nnAudio) kernels
    with the audio: each column against a direct float64 product, within 1e-5 of the peak."""
    from letsplay.models.features import cqt_kernel_bank

    spec = AudioSpec(alignment=alignment)
    with torch.inference_mode():
        ours = CQT(spec)(torch.from_numpy(music)).double().numpy()
    groups, weights, back, ahead = cqt_kernel_bank(spec)
    x = np.concatenate([np.zeros(back), music.astype(np.float64), np.zeros(ahead)])  # sample 0 at index back
    cols = np.arange(0, ours.shape[1], 7)
    ref = np.zeros((spec.n_bins, len(cols)))
    for g, w in zip(groups, weights, strict=True):
        for i, j in enumerate(cols):
            s = back + j * spec.hop + g.offset
            ri = x[s: s + g.length] @ w.astype(np.float64)
            ref[g.first_bin: g.first_bin + g.n_bins, i] = np.hypot(ri[: g.n_bins], ri[g.n_bins:])
    assert ref.max() > 1.0
    assert np.abs(ours[:, cols] - ref).max() <= 1e-5 * ref.max()


def test_running_sums_stay_exact_on_long_streams(music):
    """The float64 running sums grow with the stream. Simulate a day of it (every sum moved
    by 1.5e7 segments' worth of its largest row, as a steady tone on that channel would
    do) and the columns after it are unchanged within 1e-6 of the peak."""
    spec = AudioSpec()
    s = StreamingCQT(spec)
    x = torch.from_numpy(music)[None]
    with torch.inference_mode():
        _, st = s.step(x[:, :44100], s.init_state(1))
        ref, _ = s.step(x[:, 44100:], st)
        row = (st.prefix[:, 1:] - st.prefix[:, :-1]).abs().amax()  # the largest per-segment increment
        far = dataclasses.replace(st, prefix=st.prefix + 1.5e7 * row)
        got, _ = s.step(x[:, 44100:], far)
    assert ref.shape == got.shape and ref.max() > 1.0
    assert (got - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()
