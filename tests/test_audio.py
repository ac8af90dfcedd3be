"""Audio loading: formats, mono mixing, resampling, streaming, and clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from letsplay.models.audio import AudioError, audio_info, load_audio, stream_audio

SR = 44100


def tone(f, seconds, sr, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


@pytest.mark.parametrize("ext,fmt", [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")])
def test_formats_load_as_mono_float32(tmp_path, ext, fmt):
    p = tmp_path / f"a.{ext}"
    sf.write(p, tone(440, 1.0, SR, channels=2), SR, format=fmt)
    x = load_audio(p, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SR) < 0.05 * SR  # lossy codecs pad a little
    assert peak_hz(x, SR) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("rate", [8000, 48000, 96000])
def test_resampled_to_spec_rate(tmp_path, rate):
    p = tmp_path / "r.wav"
    sf.write(p, tone(1000, 2.0, rate), rate)
    x = load_audio(p, SR)
    assert len(x) == pytest.approx(2 * SR, abs=2)
    assert peak_hz(x, SR) == pytest.approx(1000, abs=1)
    assert np.abs(x).max() == pytest.approx(0.5, abs=0.02)


def test_six_channels_are_mixed(tmp_path):
    p = tmp_path / "six.wav"
    x = np.zeros((SR // 2, 6))
    x[:, 3] = 0.6  # one channel of DC
    sf.write(p, x, SR, subtype="FLOAT")
    y = load_audio(p, SR)
    assert np.allclose(y, 0.1, atol=1e-6)


def test_stream_equals_load_and_is_blockwise(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, tone(220, 5.0, 48000), 48000)
    blocks = list(stream_audio(p, SR, block=4096))
    assert len(blocks) > 10 and max(len(b) for b in blocks) < 5000
    assert np.array_equal(np.concatenate(blocks), load_audio(p, SR))


def test_missing_path(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav", SR)


def test_folder_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path, SR)


def test_non_audio_file(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav.*not a readable audio file"):
        load_audio(p, SR)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0), SR)
    with pytest.raises(AudioError, match="empty"):
        load_audio(p, SR)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(tmp_path, bad):
    p = tmp_path / "bad.wav"
    x = tone(440, 0.5, SR).astype(np.float32)
    x[1000] = bad
    sf.write(p, x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(p, SR)


def test_info(tmp_path):
    p = tmp_path / "i.flac"
    sf.write(p, tone(440, 1.5, 22050, channels=2), 22050)
    info = audio_info(p)
    assert info["sample_rate"] == 22050 and info["channels"] == 2
    assert info["seconds"] == pytest.approx(1.5)


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("cqt", "version"):
        assert cmd in out.stdout


def test_cli_cqt_equals_offline(tmp_path, music):
    import torch

    from letsplay.models.features import CQT
    from letsplay.models.spec import AudioSpec

    p = tmp_path / "m.wav"
    sf.write(p, music, SR, subtype="FLOAT")
    out = tmp_path / "m.npz"
    r = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "cqt", str(p), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    z = np.load(out)
    with torch.inference_mode():
        ref = CQT(AudioSpec())(torch.from_numpy(music)).numpy()
    assert np.array_equal(z["cqt"], ref)
    assert AudioSpec.from_json(str(z["spec"])) == AudioSpec()


def test_cli_bad_input_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "letsplay.ui.cli", "cqt", str(tmp_path / "x.wav"),
                        "-o", str(tmp_path / "y.npz")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "no such file" in r.stderr and "Traceback" not in r.stderr
