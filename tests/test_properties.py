"""Property-based tests (hypothesis): the audio loader over random files, StreamingCQT over
random chunk partitions, and manifest parsing over random edits of a real export.

Everything runs the real code: files are written with soundfile and read back through
``load_audio`` / ``stream_audio``; the CQT is the library's; the manifest belongs to a
real ONNX export that onnxruntime loads.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import music_signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from letsplay.export.onnx import ManifestError, export_onnx, read_manifest
from letsplay.models.audio import load_audio, stream_audio
from letsplay.models.features import StreamingCQT
from letsplay.models.performer import Performer
from letsplay.models.presets import preset
from letsplay.models.spec import AudioSpec
from letsplay.models.stepping import feeds, state_out_name
from letsplay.realtime.backends import BackendError, OrtBackend

SR = 44100
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000]
# (format, subtype, quantisation step of one sample in [-1, 1])
SUBTYPES = [("WAV", "PCM_U8", 2 / 255), ("WAV", "PCM_16", 2**-15), ("WAV", "PCM_24", 2**-23),
            ("WAV", "PCM_32", 2**-31), ("WAV", "FLOAT", 1e-7), ("WAV", "DOUBLE", 1e-7),
            ("FLAC", "PCM_16", 2**-15), ("FLAC", "PCM_24", 2**-23)]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="letsplay-props-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- audio loader


@FAST
@given(rate=st.sampled_from(RATES), channels=st.integers(1, 6), kind=st.sampled_from(SUBTYPES),
       n=st.integers(64, 12000), block=st.integers(1, 70000), seed=st.integers(0, 2**16),
       hz=st.floats(60.0, 1500.0))
def test_loader_gives_mono_float32_at_44k1_of_the_right_length(scratch, rate, channels, kind, n, block, seed, hz):
    """Any rate, channel count and sample format -> mono float32 at 44.1 kHz, the length
    ``round(n * 44100 / rate)`` +-1, and ``load_audio`` == the concatenation of
    ``stream_audio`` with any block size. At 44.1 kHz the samples are the channel mean
    (to the format's quantisation); resampled, a tone stays on its samples in time."""
    fmt, subtype, q = kind
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    tone = 0.4 * np.sin(2 * np.pi * hz * t)
    gains = rng.uniform(0.5, 1.0, channels)
    noise = rng.uniform(-0.05, 0.05, (n, channels)) if rate == SR else 0.0  # resampled: a clean tone
    x = tone[:, None] * gains + noise
    path = scratch / f"p.{fmt.lower()}"
    sf.write(path, x if channels > 1 else x[:, 0], rate, format=fmt, subtype=subtype)

    y = load_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - round(n * SR / rate)) <= 1, (len(y), n * SR / rate)
    streamed = list(stream_audio(path, SR, block=block))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in streamed)
    assert np.array_equal(np.concatenate(streamed), y)
    if rate == SR:
        assert np.abs(y - x.mean(axis=1)).max() <= q + 1e-6
    else:  # away from the edges (the resampler's filter), the tone is where it was, in time
        tt = np.arange(len(y)) / SR
        want = gains.mean() * 0.4 * np.sin(2 * np.pi * hz * tt)  # the written tone, at 44.1 kHz
        edge = int(0.004 * SR) + 64
        if len(y) > 3 * edge:
            err = np.abs(y[edge:-edge] - want[edge:-edge]).max()
            assert err < 0.03 + 2 * q, err


# --------------------------------------------------------------------------- streaming CQT


@pytest.fixture(scope="module")
def cqts():
    return {a: StreamingCQT(AudioSpec(alignment=a)) for a in ("causal", "centered")}


@FAST
@given(alignment=st.sampled_from(["causal", "centered"]), extra=st.integers(0, 4000),
       sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40), batch=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_streaming_cqt_equals_offline_for_any_chunking(cqts, alignment, extra, sizes, batch, seed):
    """Any partition of a signal into chunks (empty chunks included) gives exactly
    (torch.equal) the offline CQT's columns. A few thousand samples past what the first
    column needs (``ahead`` is 0 causal, ~11341 centered)."""
    s = cqts[alignment]
    n = s.cqt.ahead + 256 + extra
    x = torch.from_numpy(np.stack([music_signal(n / SR + 1e-3, seed=seed + b)[:n] for b in range(batch)]))
    assert x.shape == (batch, n)
    with torch.inference_mode():
        ref = s.cqt(x)
        state = s.init_state(batch)
        out, pos, i = [], 0, 0
        while pos < n:
            m = sizes[i % len(sizes)] if i < 400 else n - pos  # cycle the drawn sizes; finish if all zeros
            cols, state = s.step(x[:, pos: pos + m], state)
            out.append(cols)
            pos, i = pos + min(m, n - pos), i + 1
        got = torch.cat(out, dim=-1)
    assert int(state.n_samples) == n
    assert ref.shape[-1] == s.cqt.n_columns(n) >= 2
    assert torch.equal(got, ref)


# --------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    export_onnx(Performer(preset("tiny")).eval(), out, stages=False, cqt=False, pipeline=False)
    return out


def _paths(obj, prefix=()):
    """Every (nested) key path of a JSON value, the root excluded."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _get(d, path):
    for k in path:
        d = d[k]
    return d


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
SHAPES = st.lists(st.one_of(st.just("B"), st.integers(-3, 4096), st.text(max_size=2), st.none()), max_size=5)


@st.composite
def edits(draw, base: dict):
    """1-3 random edits of a manifest dict: a key deleted, a value replaced by any JSON
    value, an extra key, a shape list replaced, or a number nudged."""
    d = copy.deepcopy(base)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(d))
        if not paths:
            break
        read = [p for p in paths if p[0] in ("state", "graphs", "audio_spec", "video_spec")]
        if read and draw(st.booleans()):  # half the time, edit what the backends read
            paths = read
        kind = draw(st.sampled_from(["delete", "replace", "extra", "shape", "nudge"]))
        if kind == "shape":
            shape_paths = [p for p in paths if p[-1] == "shape"] or paths
            path = draw(st.sampled_from(shape_paths))
            _get(d, path[:-1])[path[-1]] = draw(SHAPES)
        elif kind == "nudge":
            num = [p for p in paths if isinstance(_get(d, p), int | float) and not isinstance(_get(d, p), bool)]
            if not num:
                continue
            path = draw(st.sampled_from(num))
            _get(d, path[:-1])[path[-1]] = _get(d, path) + draw(st.sampled_from([-1, 1, 2, 0.5]))
        else:
            path = draw(st.sampled_from(paths))
            parent, key = _get(d, path[:-1]), path[-1]
            if kind == "delete":
                del parent[key]
            elif kind == "replace":
                parent[key] = draw(JSON)
            else:
                target = _get(d, path) if isinstance(_get(d, path), dict) else d
                target[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
        done.append((kind, path))
    return d, done


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_edited_manifest_loads_or_raises_a_manifest_error(export_dir, scratch, data):
    """A real export's manifest.json, edited at random: reading it (and opening it in
    onnxruntime) either works -- and then the graph really runs with the shapes the
    manifest promises -- or raises ManifestError / BackendError naming the folder.
    Never a KeyError, TypeError, AttributeError..."""
    base = json.loads((export_dir / "manifest.json").read_text())
    d, done = data.draw(edits(base))
    folder = scratch / "m"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(export_dir, folder)
    (folder / "manifest.json").write_text(json.dumps(d))
    try:
        m = read_manifest(folder)
    except ManifestError as e:
        assert str(folder) in str(e)
        return
    try:
        b = OrtBackend(folder)
    except (ManifestError, BackendError) as e:
        assert str(folder) in str(e)
        return
    # loaded: what the manifest says is what runs
    st0 = b.init_state(1)
    out = b.step(feeds({"window": np.zeros((1, m.audio.n_bins, m.audio.window_columns), np.float32)}, st0))
    assert out["frame"].shape == (1, 3, m.video.height, m.video.width), done
    assert all(np.isfinite(v).all() for v in out.values())
    for k, v in st0.items():
        assert out[state_out_name(k)].shape == v.shape


def test_unedited_manifest_loads(export_dir, scratch):
    """The property's control: the export itself, and one with an extra top-level key
    (a newer writer's addition), load and run."""
    assert read_manifest(export_dir).video.height == 32
    folder = scratch / "extra"
    shutil.copytree(export_dir, folder, dirs_exist_ok=True)
    d = json.loads((export_dir / "manifest.json").read_text())
    d["comment"] = "added by hand"
    (folder / "manifest.json").write_text(json.dumps(d))
    b = OrtBackend(folder)
    out = b.step(feeds({"window": np.zeros((1, 84, 87), np.float32)}, b.init_state(1)))
    assert out["frame"].shape == (1, 3, 32, 32)
