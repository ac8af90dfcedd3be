"""Audio in: any file libsndfile reads (wav, flac, ogg, mp3, ...), as mono float32 at the
spec's sample rate.

``load_audio`` reads a whole file; ``stream_audio`` yields it block by block (a 10-hour
file never sits in memory) with a streaming resampler, and both give the same samples.
Bad input -- a missing path, an empty or non-audio file, NaN or inf samples, a
compressed file damaged mid-way -- raises :class:`AudioError`, whose message names the
file, what was wrong and what to do. A WAV whose data chunk is cut short (an interrupted
copy) is read up to the cut, with a warning; so is clipped (full-scale) audio.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file or buffer that letsplay cannot use; the message says why."""


def _open(path: str | Path):
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes); give a wav, flac, ogg or mp3 file with audio in it")
    try:
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{p}: not a readable audio file ({e}); give a wav, flac, ogg or mp3 file, "
                         f"or convert it first (e.g. ffmpeg -i IN -ar 44100 OUT.wav)") from e
    if f.frames == 0 or f.samplerate <= 0:
        f.close()
        raise AudioError(f"{p}: the file holds no audio samples (empty)")
    return f


# libsndfile's log for a WAV whose data chunk is cut short: "data : 88200 (should be 44078)".
_DATA_CUT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
CLIP_LEVEL = 0.999  # |sample| at or above this is counted as clipped (full scale)
CLIP_WARN_FRACTION = 0.001  # warn when more than this share of the samples is clipped


def _truncated(f) -> tuple[int, int] | None:
    """(bytes announced, bytes present) when a WAV's data chunk is cut short, else None.

    libsndfile reads the samples that are there without an error; only its log says
    the header announced more. A size of 0 or 0xFFFFFFFF is a WAV streamed without a
    known length (ffmpeg to a pipe), not a truncated one."""
    try:
        m = _DATA_CUT.search(f.extra_info)
    except Exception:  # noqa: BLE001 - the log is a nicety; never fail a read over it
        return None
    if m is None:
        return None
    announced, present = int(m[1]), int(m[2])
    if announced in (0, 0xFFFFFFFF) or present >= announced:
        return None
    return announced, present


def check_finite(x: np.ndarray, where: str) -> None:
    """Raise AudioError when x holds NaN or inf (a broken decoder or a bad buffer)."""
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise AudioError(f"{where}: {bad} samples are NaN or infinite; the audio is damaged "
                         f"(re-export it from its source)")


def to_mono(x: np.ndarray) -> np.ndarray:
    """[N, C] or [N] -> [N] float32, channels averaged."""
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _resampler(in_rate: int, out_rate: int):
    import soxr

    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")


def stream_audio(path: str | Path, sample_rate: int, block: int = 65536) -> Iterator[np.ndarray]:
    """Yield mono float32 blocks of ``path`` at ``sample_rate`` (about ``block`` input
    frames each), resampled on the fly. Raises AudioError on bad input."""
    f = _open(path)
    with f:
        rs = _resampler(f.samplerate, sample_rate) if f.samplerate != sample_rate else None
        if rs is None:
            log.debug("%s: %d Hz, %d ch, %d frames", path, f.samplerate, f.channels, f.frames)
        else:
            log.info("%s: resampling %d Hz -> %d Hz", path, f.samplerate, sample_rate)
        cut = _truncated(f)
        if cut is not None:
            log.warning("%s: the file is truncated: its header announces %d bytes of audio but only %d are "
                        "there (%.2f s, %.0f%%); using what is there -- re-export or re-download the file for "
                        "the rest", path, cut[0], cut[1], f.frames / f.samplerate, 100 * cut[1] / cut[0])
        read = clipped = 0
        while True:
            try:
                x = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:  # a truncated or corrupted compressed file fails mid-read
                raise AudioError(f"{path}: the file is damaged after {read} frames "
                                 f"({read / f.samplerate:.2f} s: {e}); re-export or re-download it, or convert "
                                 f"the readable part (ffmpeg -i IN OUT.wav)") from e
            last = len(x) < block
            read += len(x)
            clipped += int(np.count_nonzero(np.abs(x) >= CLIP_LEVEL))
            x = to_mono(x)
            check_finite(x, str(path))
            if rs is not None:
                x = rs.resample_chunk(x, last=last)
            if len(x):
                yield x
            if last:
                break
        if read == 0:
            raise AudioError(f"{path}: the file holds no audio samples (empty)")
        if clipped > CLIP_WARN_FRACTION * read * f.channels:
            log.warning("%s: %.1f%% of the samples are at full scale (clipped); it renders, but the "
                        "performer hears the distortion -- lower the level before exporting the file",
                        path, 100 * clipped / (read * f.channels))


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Whole file -> mono float32 [N] at ``sample_rate``. Raises AudioError on bad input."""
    out = np.concatenate(list(stream_audio(path, sample_rate)))
    if out.size == 0:
        raise AudioError(f"{path}: the file holds no audio samples (empty)")
    return out


def audio_info(path: str | Path) -> dict:
    """Sample rate, channels, frames and duration of a file, without reading the samples."""
    f = _open(path)
    with f:
        return {"path": str(path), "sample_rate": f.samplerate, "channels": f.channels,
                "frames": f.frames, "seconds": f.frames / f.samplerate,
                "format": f.format, "subtype": f.subtype}
