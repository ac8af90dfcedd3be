"""Robustness to bad input: audio files, checkpoints, exports, paths.

Each bad input is refused with an error that names the file and says what to do; each
legitimate but unusual one (clipped, silent, 8 / 96 kHz, six channels, a truncated WAV,
ten hours long) is handled: it loads and renders, with finite frames.

Everything is real: files are written to disk and read back by the library's own code,
the CLI runs end to end (``letsplay.ui.cli.main``, in process, or a subprocess where
memory is measured). The hostile pickles are real: their payload runs when they are
unpickled -- shown on a control copy -- and the library must never unpickle them.
Already covered elsewhere (not repeated here): missing / folder / non-audio / empty
(header only) / NaN / inf audio, 8-48-96 kHz lengths and six-channel mixing
(tests/test_audio.py); truncated, foreign, version-0 and hand-edited checkpoints
(tests/test_models_checkpoint.py); corrupted graphs, edited state shapes and broken or
missing manifests (tests/test_export.py); missing, read-only and unwritable output
folders at the sink level (tests/test_sinks.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import music_signal

from letsplay.export.onnx import ManifestError, read_manifest, sha256_file
from letsplay.models.audio import AudioError, audio_info, load_audio
from letsplay.models.performer import CheckpointError, Performer, read_checkpoint
from letsplay.models.stepping import feeds, next_state
from letsplay.realtime.backends import BackendError, BackendOptions, OrtBackend, TorchBackend, open_backend
from letsplay.realtime.engine import Engine, EngineConfig
from letsplay.realtime.performers import resolve_performer
from letsplay.realtime.sinks import CallbackSink
from letsplay.realtime.sources import FileSource
from letsplay.ui.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 44100
ROOT = Path(__file__).parents[1]


class FiniteBackend(TorchBackend):
    """The real torch backend, keeping every raw output so a test can check it is finite
    (the engine turns frames into uint8, where a NaN would hide)."""

    def __init__(self, p):
        super().__init__(p)
        self.nonfinite = 0
        self.steps = 0

    def step(self, feeds):
        out = super().step(feeds)
        self.steps += 1
        self.nonfinite += sum(int((~np.isfinite(v)).sum()) for v in out.values())
        return out


def render_file(performer, path) -> tuple[list, FiniteBackend, dict]:
    frames = []
    be = FiniteBackend(performer)
    eng = Engine(be, performer.cfg.audio, performer.cfg.video, FileSource(path, SR),
                 [CallbackSink(frames.append)], EngineConfig(realtime=False))
    stats = eng.run()
    return frames, be, stats


def cli(capsys, *args) -> tuple[int, str]:
    """`letsplay ARGS` in this process: (exit code, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------- audio: legitimate


def _square(seconds, sr):
    t = np.arange(int(seconds * sr)) / sr
    return np.where(np.sin(2 * np.pi * 220 * t) >= 0, 1.0, -1.0)


def _write_silent(p):
    sf.write(p, np.zeros(SR), SR)


def _write_square(p):
    sf.write(p, _square(1.0, SR), SR, subtype="PCM_16")


def _write_hot_float(p):
    sf.write(p, 4 * music_signal(1.0, seed=1), SR, subtype="FLOAT")


def _write_8k(p):
    sf.write(p, music_signal(1.0, sr=8000, seed=2), 8000)


def _write_96k(p):
    sf.write(p, music_signal(1.0, sr=96000, seed=3), 96000, subtype="PCM_24")


def _write_six_channels(p):
    sf.write(p, np.stack([music_signal(1.0, seed=4 + c) for c in range(6)], axis=1) * 0.9, SR)


# name -> (writer of a 1 s file, whether a "clipped" warning is due)
LEGIT = {
    "silent": (_write_silent, False),
    "clipped square (int16 full scale)": (_write_square, True),
    "4x over full scale (float)": (_write_hot_float, True),
    "8 kHz": (_write_8k, False),
    "96 kHz": (_write_96k, False),
    "6 channels": (_write_six_channels, False),
}


@pytest.mark.parametrize("case", list(LEGIT))
def test_legitimate_audio_renders_finite_frames(case, performer, tmp_path, caplog):
    """Clipped, silent, 8 / 96 kHz and six-channel files load and render: every frame of
    their duration, finite outputs (no NaN anywhere in frames, keypoints or state)."""
    write, clipped = LEGIT[case]
    path = tmp_path / "in.wav"
    write(path)
    seconds = 1.0
    caplog.set_level(logging.WARNING)
    frames, be, stats = render_file(performer, path)
    n = math.ceil(seconds * 30)
    assert [f.index for f in frames] == list(range(n))
    assert stats["audio_seconds"] == pytest.approx(seconds, abs=2 / SR)  # resampled: duration preserved
    assert be.steps == n and be.nonfinite == 0
    assert all(np.isfinite(f.keypoints).all() for f in frames)
    assert stats["errors"] == 0
    warned = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert bool(warned) == clipped, warned
    if clipped:
        assert str(path) in warned[0] and "lower the level" in warned[0]


def test_clipped_audio_is_loaded_unchanged(tmp_path):
    """Clipping is reported, never "repaired": the samples are what the file holds."""
    sq = _square(0.5, SR)
    p = tmp_path / "sq.wav"
    sf.write(p, sq, SR, subtype="PCM_16")
    x = load_audio(p, SR)
    assert np.abs(x - sq).max() <= 2**-15
    p2 = tmp_path / "hot.wav"
    sf.write(p2, 4 * sq, SR, subtype="FLOAT")
    assert np.array_equal(load_audio(p2, SR), (4 * sq).astype(np.float32))


def test_shipped_performer_on_silence_is_finite():
    """The shipped (trained) performer, three frames of pure silence: all finite."""
    b = TorchBackend(Performer.load(resolve_performer("cello").path))
    st = b.init_state(1)
    for _ in range(3):
        out = b.step(feeds({"window": np.zeros((1, 84, 87), np.float32)}, st))
        st = next_state(out, st)
        assert all(np.isfinite(v).all() for v in out.values())


# --------------------------------------------------------------------------- audio: truncated / damaged


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
@pytest.mark.parametrize("odd", [0, 1])  # cut on a sample boundary, or in the middle of a sample
def test_truncated_wav_is_read_up_to_the_cut_with_a_warning(tmp_path, caplog, subtype, odd):
    """A WAV whose data chunk was cut mid-way (an interrupted copy): libsndfile reads what
    is there without a word; letsplay says so, naming the file, and uses what is there."""
    x = music_signal(2.0, seed=5)
    full = tmp_path / "full.wav"
    sf.write(full, x, SR, subtype=subtype)
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2 + odd])
    caplog.set_level(logging.WARNING)
    y = load_audio(cut, SR)
    ref = load_audio(full, SR)
    assert SR * 0.9 < len(y) < SR * 1.1  # about half of the 2 s
    assert np.array_equal(y, ref[: len(y)])  # exactly the samples before the cut
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"{cut}: the file is truncated" in msg and "re-download" in msg
    assert audio_info(cut)["frames"] == len(y)  # what render's progress bar counts


def test_complete_wav_raises_no_truncation_warning(tmp_path, caplog):
    p = tmp_path / "ok.wav"
    sf.write(p, music_signal(0.5, seed=6), SR)
    caplog.set_level(logging.WARNING)
    load_audio(p, SR)
    assert "truncated" not in caplog.text


def test_wav_cut_inside_its_header_is_a_clear_error(tmp_path):
    p = tmp_path / "full.wav"
    sf.write(p, music_signal(0.5, seed=6), SR)
    bad = tmp_path / "header.wav"
    bad.write_bytes(p.read_bytes()[:30])
    with pytest.raises(AudioError, match=r"header\.wav: not a readable audio file.*convert it first"):
        load_audio(bad, SR)


def test_zero_byte_file_is_called_empty(tmp_path):
    p = tmp_path / "zero.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav: the file is empty \(0 bytes\)"):
        load_audio(p, SR)


def test_damaged_flac_stops_the_render_with_a_clear_error_and_keeps_the_recording(tmp_path, tiny_ckpt, capsys):
    """A FLAC cut at 60 %: the render goes as far as the decoder can, then stops with an
    error naming the file and what to do (exit 2, no traceback); the mp4 of what was
    rendered is finished and plays, its audio and video ending together."""
    full = tmp_path / "full.flac"
    sf.write(full, music_signal(6.0, seed=7), SR)
    flac = tmp_path / "cut.flac"
    flac.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    out = tmp_path / "out.mp4"
    rc, err = cli(capsys, "render", flac, "-o", out, "--performer", tiny_ckpt, "--backend", "torch")
    assert rc == 2, err
    assert f"{flac}: the file is damaged after" in err and "re-export or re-download" in err
    assert "Traceback" not in err and not out.exists()  # a failed render keeps its partial name
    out = tmp_path / "out.partial.mp4"
    assert str(out) in err
    with av.open(str(out)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        n_audio = sum(f.samples for f in c.decode(audio=0))
    assert len(times) >= 44  # at least the first 65536-sample block (1.49 s) was rendered
    assert times == pytest.approx([i / 30 for i in range(len(times))], abs=1e-4)
    assert abs(n_audio / SR - len(times) / 30) <= 1 / 30


# --------------------------------------------------------------------------- audio: ten hours

TEN_HOURS = 36000
READER = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # whole-file loading could not even start
    from letsplay.models.audio import audio_info, stream_audio
    from letsplay.realtime.sources import FileSource

    path, sr = sys.argv[1], 44100
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    info = audio_info(path)
    src = FileSource(path, sr)  # opens and decodes the first block only
    base = peak()
    first = []
    while sum(map(len, first)) < 60 * sr:
        x, start = src.read()
        assert start == sum(map(len, first))
        first.append(x)
    first = np.concatenate(first)[: 60 * sr: 997]  # a sample of it, to compare; the rest is let go
    after_minute = peak()
    n, tail = 0, []
    for b in stream_audio(path, sr):  # now all ten hours, block by block
        n += len(b)
        tail.append(b)
        while sum(map(len, tail)) - len(tail[0]) >= 60 * sr:
            tail.pop(0)
    last = np.concatenate(tail)[-60 * sr:]
    print(json.dumps({"seconds": info["seconds"], "frames": info["frames"], "n": n,
                      "grow_minute_kib": after_minute - base, "grow_all_kib": peak() - base,
                      "first": first.tolist(), "last": last[::997].tolist()}))
""")


@pytest.mark.slow
def test_ten_hour_file_is_streamed_not_loaded(tmp_path):
    """A 10-hour 44.1 kHz int16 WAV (3.2 GB as the header and file size say; a sparse file
    on disk: the first and last minutes hold noise and a tone, the hours between are
    silence). ``audio_info`` says 36000 s from the header; a FileSource and then
    ``stream_audio`` read it block by block to the very end in a subprocess whose address
    space is capped at 3 GiB (loading it whole, 6.4 GB of float32, is impossible there),
    and its peak memory grows by less than 64 MiB."""
    n = TEN_HOURS * SR
    data_bytes = 2 * n
    if shutil.disk_usage(tmp_path).free < data_bytes + (1 << 30):
        pytest.skip("needs ~4.2 GB free in the temp folder, in case it does not support sparse files")
    path = tmp_path / "ten_hours.wav"
    rng = np.random.default_rng(0)
    first = (rng.standard_normal(60 * SR) * 300).astype("<i2")
    last = (3000 * np.sin(2 * np.pi * 440 * np.arange(60 * SR) / SR)).astype("<i2")
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16)
                + b"data" + struct.pack("<I", data_bytes))
        f.write(first.tobytes())
        f.seek(44 + data_bytes - last.nbytes)
        f.write(last.tobytes())
    assert path.stat().st_size == 44 + data_bytes
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["seconds"] == TEN_HOURS and got["frames"] == n
    assert got["n"] == n  # every sample, streamed
    assert got["grow_minute_kib"] < 64 * 1024 and got["grow_all_kib"] < 64 * 1024, got
    assert np.array_equal(np.array(got["first"], np.float32), first[::997].astype(np.float32) / 32768)
    assert np.array_equal(np.array(got["last"], np.float32), last[::997].astype(np.float32) / 32768)


# --------------------------------------------------------------------------- hostile pickles


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code of the file's author runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(folder: Path, marker: Path) -> dict[str, Path]:
    raw = pickle.dumps(_Payload(marker), protocol=4)
    files = {}
    for name in ("raw.pkl", "raw.safetensors", "raw.pt"):
        files[name] = folder / name
        files[name].write_bytes(raw)
    for name in ("saved.pt", "saved.safetensors", "saved.ckpt"):
        files[name] = folder / name
        torch.save({"state_dict": _Payload(marker)}, files[name])  # a torch checkpoint (zip + pickle)
    return files


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "PWNED"
    files = _hostile(tmp_path, marker)
    # control: these really are live payloads
    ctrl = tmp_path / "control"
    ctrl.mkdir()
    ctrl_marker = ctrl / "RAN"
    ctrl_files = _hostile(ctrl, ctrl_marker)
    pickle.loads(ctrl_files["raw.pkl"].read_bytes()).close()
    assert ctrl_marker.exists()
    ctrl_marker.unlink()
    torch.load(ctrl_files["saved.pt"], weights_only=False)["state_dict"].close()
    assert ctrl_marker.exists()
    yield files, marker
    assert not marker.exists(), "a hostile pickle was unpickled"


def test_hostile_pickles_are_refused_by_the_library(hostile, tmp_path, monkeypatch):
    files, marker = hostile
    monkeypatch.setenv("LETSPLAY_CACHE", str(tmp_path / "cache"))
    for name, p in files.items():
        with pytest.raises(CheckpointError, match=rf"{p.name}: not a readable safetensors file"):
            Performer.load(p)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            read_checkpoint(p)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            open_backend(p, BackendOptions(backend="torch"))
        for backend in ("torch", "onnxruntime", "auto"):  # onnxruntime / auto export it first: refused there
            with pytest.raises(CheckpointError, match="not a readable safetensors file"):
                open_backend(resolve_performer(str(p)), BackendOptions(backend=backend))
        with pytest.raises(ManifestError, match="no manifest.json"):
            OrtBackend(p)
        assert not marker.exists(), name
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing was exported from them


def test_hostile_pickles_are_refused_by_the_cli(hostile, tmp_path, capsys, monkeypatch):
    files, marker = hostile
    monkeypatch.setenv("LETSPLAY_CACHE", str(tmp_path / "cache"))
    wav = tmp_path / "a.wav"
    sf.write(wav, music_signal(0.3, seed=8), SR)
    out = tmp_path / "out.mp4"
    for p in (files["raw.pt"], files["saved.safetensors"]):
        for backend in ("torch", "onnxruntime"):
            rc, err = cli(capsys, "render", wav, "-o", out, "--performer", p, "--backend", backend)
            assert rc == 2 and f"{p}: not a readable safetensors file" in err and "Traceback" not in err, err
        rc, err = cli(capsys, "export", "onnx", "--checkpoint", p, "--out", tmp_path / "exp")
        assert rc == 2 and "not a readable safetensors file" in err, err
    assert not out.exists() and not marker.exists()


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export[0]


def _copy(export_dir: Path, dest: Path) -> tuple[Path, dict]:
    shutil.copytree(export_dir, dest)
    return dest, json.loads((dest / "manifest.json").read_text())


def test_hostile_graph_and_manifest_are_refused(hostile, export_dir, tmp_path):
    """An export folder whose performer.onnx is a pickle (its digest put in the manifest,
    as an attacker would) and one whose manifest.json is a pickle."""
    files, marker = hostile
    for src in (files["raw.pkl"], files["saved.pt"]):
        folder, man = _copy(export_dir, tmp_path / f"graph-{src.stem}")
        shutil.copy(src, folder / "performer.onnx")
        man["graphs"]["performer"]["sha256"] = sha256_file(folder / "performer.onnx")
        (folder / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(BackendError, match=rf"{folder}: onnxruntime cannot load performer\.onnx.*re-export"):
            OrtBackend(folder)
        folder, _ = _copy(export_dir, tmp_path / f"manifest-{src.stem}")
        shutil.copy(src, folder / "manifest.json")
        with pytest.raises(ManifestError, match="not valid JSON|not a letsplay export manifest"):
            OrtBackend(folder)
    assert not marker.exists()


# --------------------------------------------------------------------------- exports: versions, truncation


def test_manifest_from_another_version_or_truncated(export_dir, tmp_path):
    folder, man = _copy(export_dir, tmp_path / "v2")
    (folder / "manifest.json").write_text(json.dumps({**man, "version": 2}))
    with pytest.raises(ManifestError, match="manifest version 2, this letsplay reads 1; re-export"):
        OrtBackend(folder)
    folder, _ = _copy(export_dir, tmp_path / "half")
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ManifestError, match=r"manifest\.json: not valid JSON.*re-export"):
        read_manifest(folder)
    folder, man = _copy(export_dir, tmp_path / "nofile")
    (folder / "performer.onnx").unlink()
    with pytest.raises(ManifestError, match="performer.onnx is missing; re-export"):
        OrtBackend(folder)


def test_truncated_graph_is_refused_even_with_a_matching_digest(export_dir, tmp_path):
    """Cut in half, the digest catches it; with the digest recomputed (hand-edited
    manifest), onnxruntime itself refuses it, and we say so."""
    folder, man = _copy(export_dir, tmp_path / "cut")
    g = folder / "performer.onnx"
    g.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    with pytest.raises(ManifestError, match="SHA-256 does not match"):
        OrtBackend(folder)
    man["graphs"]["performer"]["sha256"] = sha256_file(g)
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BackendError, match="onnxruntime cannot load performer.onnx"):
        OrtBackend(folder)


def test_hand_edited_manifest_specs_are_refused(export_dir, tmp_path):
    """Specs edited by hand so that they disagree with the graph or the stored config."""
    folder, man = _copy(export_dir, tmp_path / "edit")
    for edit, match in ((lambda m: m["video_spec"].update(height=64), "frame is"),
                        (lambda m: m["audio_spec"].update(hop=512), "disagree with the stored config"),
                        (lambda m: m["audio_spec"].update(n_bins=80), "disagree|does not match"),
                        (lambda m: m["state"][0].pop("shape"), "state entry 0"),
                        (lambda m: m["graphs"]["performer"].update(file="../../etc/passwd"), "not a file in the")):
        m = json.loads(json.dumps(man))
        edit(m)
        (folder / "manifest.json").write_text(json.dumps(m))
        with pytest.raises((ManifestError, BackendError), match=match):
            OrtBackend(folder)


# --------------------------------------------------------------------------- the CLI: paths and damaged files


def test_cli_bad_paths_are_clear_errors(tiny_ckpt, tmp_path, capsys):
    """Each: exit 2, the path named, advice, no traceback -- before any rendering."""
    wav = tmp_path / "a.wav"
    sf.write(wav, music_signal(0.3, seed=9), SR)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_ckpt.read_bytes()[:500])
    cases = [
        (["render", tmp_path / "nope.wav", "-o", tmp_path / "o.mp4"], "nope.wav: no such file"),
        (["render", wav, "-o", tmp_path / "o.mp4", "--performer", tmp_path / "nope.safetensors"],
         "no performer"),
        (["render", wav, "-o", tmp_path / "o.mp4", "--performer", tmp_path], "a folder without manifest.json"),
        (["render", wav, "-o", tmp_path / "o.mp4", "--performer", cut, "--backend", "torch"], "truncated"),
        (["render", wav, "-o", tmp_path / "no" / "such" / "o.mp4", "--performer", tiny_ckpt, "--backend", "torch"],
         "does not exist; create it first"),
        (["render", wav, "-o", "/proc/o.mp4", "--performer", tiny_ckpt, "--backend", "torch"], "is not writable"),
        (["render", wav, "--keypoints", "/proc/kp.npz", "--performer", tiny_ckpt, "--backend", "torch"],
         "is not writable"),
        (["live", "--device", "no-such-device-xyz", "--no-window", "--performer", tiny_ckpt, "--backend", "torch"],
         "no-such-device-xyz"),
    ]
    for args, want in cases:
        rc, err = cli(capsys, *args)
        assert rc == 2, (args, err)
        assert want in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "o.mp4").exists()
