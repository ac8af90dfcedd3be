"""The constant-Q front end: one CQT, offline and streaming, from the same code.

The paper (section III-A) feeds its keypoint predictor an 84x87 CQT window (~0.5 s).
Training computes the CQT of whole clips; the live engine computes it on audio chunks
as they arrive. Both go through :meth:`CQT.columns`, so the features a model sees live
are the features it was trained on.

Kernels come from nnAudio's ``create_cqt_kernels`` (Brown & Puckette 1992, librosa
normalisation: L1-normalised Hann-windowed complex exponentials, output scaled by
sqrt(kernel length), as nnAudio's ``CQT1992v2``). Instead of nnAudio's single
zero-padded FFT-length kernel bank (32768 taps for every bin at 44.1 kHz), each bin's
kernel is cut to its exact length and the bins are grouped by octave: one matrix
product per octave over just the samples that octave needs. A new column then costs
about a sixth of an nnAudio column, and a stream computes only its new columns.

Column ``j`` belongs to time ``j * hop`` samples. Where its kernels sit is set by
``AudioSpec.alignment``:

* ``causal``: bin k covers samples ``[j*hop - l_k, j*hop)`` -- it ends at the column's
  time, so column j is ready as soon as ``j*hop`` samples have arrived;
* ``centered``: each kernel sits exactly where nnAudio's ``CQT1992v2(center=True)``
  puts it (centred on ``j*hop``), so column j needs ~``l_max/2`` samples beyond its time.

Audio before the stream start is silence (zeros). Column 0 exists, at time 0. A signal
of N samples has the columns whose kernels end by sample N: ``(N - ahead) // hop + 1``
of them, where ``ahead`` is 0 for ``causal``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

ROW_BLOCK = 8  # columns per matrix product (see CQT.columns)
GROUP_BINS = 12  # adjacent bins sharing one kernel support (padding waste vs. op count)


# --------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class _OctaveGroup:
    """One octave's bins: kernels embedded in a shared support ``[offset, offset+length)``."""

    first_bin: int  # index of the group's first bin
    n_bins: int  # bins in the group
    offset: int  # support start, in samples relative to the column's time
    length: int  # support length in samples


def cqt_kernel_bank(spec: AudioSpec) -> tuple[list[_OctaveGroup], list[np.ndarray], int, int]:
    """Exact-length CQT kernels grouped by octave.

    Returns ``(groups, weights, back, ahead)``: per group a real matrix
    ``[length, 2 * n_bins]`` (real parts, then imaginary parts, librosa scaling folded in)
    and the samples a column needs before (``back``) and after (``ahead``) its time.
    """
    from nnAudio.utils import create_cqt_kernels

    q = 1.0 / (2.0 ** (1.0 / spec.bins_per_octave) - 1.0)
    kernels, fft_len, lengths, _freqs = create_cqt_kernels(
        q, spec.sample_rate, spec.fmin, spec.n_bins, spec.bins_per_octave, norm=1, window="hann"
    )
    lengths = lengths.numpy().astype(np.int64)
    # Where each bin's exact kernel sits inside nnAudio's fft_len-wide kernel row.
    starts = np.array([int(np.flatnonzero(np.abs(kernels[k]) > 0)[0]) for k in range(spec.n_bins)])
    if spec.alignment == "causal":
        offsets = -lengths  # kernel ends at the column's time
    else:
        # nnAudio(center=True) pads fft_len//2 in front: row index n is time n - fft_len//2.
        offsets = starts - fft_len // 2

    groups: list[_OctaveGroup] = []
    weights: list[np.ndarray] = []
    for first in range(0, spec.n_bins, GROUP_BINS):
        bins = range(first, min(first + GROUP_BINS, spec.n_bins))
        lo = int(min(offsets[k] for k in bins))
        hi = int(max(offsets[k] + lengths[k] for k in bins))
        w = np.zeros((hi - lo, 2 * len(bins)), dtype=np.float64)
        for i, k in enumerate(bins):
            row = kernels[k, starts[k]: starts[k] + lengths[k]].astype(np.complex128)
            row = row * math.sqrt(lengths[k])  # librosa normalisation, as CQT1992v2
            a = int(offsets[k]) - lo
            w[a: a + lengths[k], i] = row.real
            w[a: a + lengths[k], len(bins) + i] = row.imag
        groups.append(_OctaveGroup(first, len(bins), lo, hi - lo))
        weights.append(w.astype(np.float32))
    back = -min(g.offset for g in groups)
    ahead = max(g.offset + g.length for g in groups)
    return groups, weights, back, ahead


# --------------------------------------------------------------------------- the CQT


class CQT(nn.Module):
    """CQT magnitudes of audio, per :class:`AudioSpec`; the one implementation.

    ``forward(audio)`` is the offline CQT of whole signals; :class:`StreamingCQT` feeds
    the same :meth:`columns` from chunks. Runs on whatever device the module is on.
    """

    def __init__(self, spec: AudioSpec, block_columns: int = 256) -> None:
        super().__init__()
        self.spec = spec
        self.block_columns = block_columns  # offline: columns computed per matrix product
        groups, weights, back, ahead = cqt_kernel_bank(spec)
        self.groups = groups
        self.back = back  # samples a column needs before its time
        self.ahead = ahead  # samples a column needs after its time (0 when causal)
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", torch.from_numpy(w), persistent=False)

    @property
    def context(self) -> int:
        """Samples of history a stream carries: enough for any next column."""
        return self.back + self.ahead + self.spec.hop - 1

    def n_columns(self, n_samples: int) -> int:
        """Columns available once ``n_samples`` samples (from the stream start) exist."""
        return max(0, (n_samples - self.ahead) // self.spec.hop + 1)

    def columns(self, x: Tensor, x_start: int, first: int, count: int) -> Tensor:
        """Columns ``first .. first+count-1`` from ``x``, which holds samples from ``x_start``.

        x: [B, L] float32 audio; sample ``x[:, i]`` is at absolute time ``x_start + i``.
        Returns [B, n_bins, count].

        Columns are computed in matrix products of exactly ``ROW_BLOCK`` columns (the
        last block zero-padded): a GEMM row's rounding depends on the block shape, never
        on the other rows, so a column comes out bit-identical however the audio was
        chunked -- offline training features equal live features exactly.
        """
        B, L = x.shape
        hop, R = self.spec.hop, ROW_BLOCK
        padded = -(-count // R) * R
        lo = first * hop - self.back - x_start  # first sample the block reads, in x
        hi = (first + count - 1) * hop + self.ahead - x_start  # one past the last
        if lo < 0 or hi > L:
            raise ValueError(f"CQT.columns: x (samples {x_start}..{x_start + L}) does not cover "
                             f"columns {first}..{first + count - 1}")
        if padded != count:  # zeros behind x so the padding columns have something to read
            x = torch.cat([x, x.new_zeros(B, (padded - count) * hop)], dim=1)
        parts = []
        for i, g in enumerate(self.groups):
            w: Tensor = getattr(self, f"w{i}")  # [length, 2 * n_bins]
            s = first * hop + g.offset - x_start  # start of the first column's support in x
            frames = x[:, s: s + (padded - 1) * hop + g.length].unfold(1, g.length, hop)  # [B, padded, length]
            blocks = frames.reshape(B * padded // R, R, g.length)  # rows overlap: bmm copies them
            ri = torch.bmm(blocks, w.expand(blocks.shape[0], -1, -1))  # [B*nb, R, 2 * n_bins]
            parts.append(ri.reshape(B, padded, 2, g.n_bins)[:, :count])
        ri = torch.cat(parts, dim=-1)  # [B, count, 2, n_bins]
        mag = torch.sqrt(ri[:, :, 0] ** 2 + ri[:, :, 1] ** 2).transpose(1, 2)  # [B, n_bins, count]
        if self.spec.scaling == "log":
            mag = torch.log1p(mag)
        return mag

    def forward(self, audio: Tensor) -> Tensor:
        """Offline CQT. audio: [B, N] or [N] -> [B, n_bins, n_columns(N)] (or [n_bins, T])."""
        squeeze = audio.dim() == 1
        x = audio.unsqueeze(0) if squeeze else audio
        B, N = x.shape
        n = self.n_columns(N)
        pad = x.new_zeros(B, self.back)  # silence before the start
        x = torch.cat([pad, x], dim=1)  # sample 0 is now at index `back`
        blocks = [
            self.columns(x, -self.back, first, min(self.block_columns, n - first))
            for first in range(0, n, self.block_columns)
        ]
        y = torch.cat(blocks, dim=-1) if blocks else x.new_zeros(B, self.spec.n_bins, 0)
        return y[0] if squeeze else y


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class CQTState:
    """A stream's carried audio: the last ``context`` samples and the total count."""

    tail: Tensor  # [B, context] the most recent samples (zeros before the stream start)
    n_samples: Tensor  # [] int64, samples received since the stream start


class StreamingCQT(nn.Module):
    """Chunked CQT with explicit state: emits exactly the offline CQT's columns.

    ``step(chunk, state)`` accepts any number of samples (1 to many seconds) and returns
    only the columns that became complete, computed from the carried tail -- the
    window is never recomputed.
    """

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        self.spec = spec
        self.cqt = CQT(spec)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> CQTState:
        return CQTState(
            tail=torch.zeros(batch, self.cqt.context, device=device),
            n_samples=torch.zeros((), dtype=torch.int64, device=device),
        )

    def step(self, chunk: Tensor, state: CQTState) -> tuple[Tensor, CQTState]:
        """chunk: [B, M] float32 audio -> (columns [B, n_bins, k], new state), k >= 0."""
        B, M = chunk.shape
        n = int(state.n_samples)
        if M == 0:
            return chunk.new_zeros(B, self.spec.n_bins, 0), state
        x = torch.cat([state.tail, chunk.to(state.tail.dtype)], dim=1)  # samples n-context .. n+M
        first = self.cqt.n_columns(n) if n > 0 else 0  # columns already emitted
        count = self.cqt.n_columns(n + M) - first
        if count > 0:
            cols = self.cqt.columns(x, n - self.cqt.context, first, count)
        else:
            cols = x.new_zeros(B, self.spec.n_bins, 0)
        new = CQTState(tail=x[:, x.shape[1] - self.cqt.context:].contiguous(),
                       n_samples=state.n_samples + M)
        return cols, new

    def forward(self, chunks: list[Tensor]) -> Tensor:
        """A sequence of chunks from a fresh state -> all their columns (a loop of ``step``)."""
        state = self.init_state(chunks[0].shape[0], chunks[0].device)
        out = []
        for c in chunks:
            cols, state = self.step(c, state)
            out.append(cols)
        return torch.cat(out, dim=-1)


# --------------------------------------------------------------------------- frame windows


def frame_column(i: int, audio: AudioSpec, video: VideoSpec) -> int:
    """Index of the newest CQT column frame ``i`` sees: the last column at or before
    ``i / fps + lookahead`` seconds."""
    t = i / video.fps + video.lookahead_ms / 1000.0
    return math.floor(t * audio.sample_rate / audio.hop + 1e-9)


def frame_windows(cqt: Tensor, audio: AudioSpec, video: VideoSpec, frames: range | int) -> Tensor:
    """The model input windows for video frames: for frame i, the ``window_columns``
    columns ending at :func:`frame_column` (i). Columns before the start are zeros
    (silence); a frame whose newest column is not in ``cqt`` is an error.

    cqt: [..., n_bins, T] -> [n_frames, ..., n_bins, window_columns]
    """
    frames = range(frames) if isinstance(frames, int) else frames
    W = audio.window_columns
    T = cqt.shape[-1]
    pad = cqt.new_zeros(*cqt.shape[:-1], W - 1)
    padded = torch.cat([pad, cqt], dim=-1)  # column c is at index c + W - 1
    out = []
    for i in frames:
        c = frame_column(i, audio, video)
        if c >= T:
            raise ValueError(f"frame {i} needs CQT column {c}, but only {T} columns exist; "
                             f"give more audio or fewer frames")
        out.append(padded[..., c: c + W])
    return torch.stack(out) if out else cqt.new_zeros(0, *cqt.shape[:-1], W)


def frames_available(n_samples: int, cqt: CQT, video: VideoSpec) -> int:
    """How many frames (0..k-1) exist once ``n_samples`` samples do: frame i needs its
    newest column (:func:`frame_column`) and audio strictly past its time
    ``i / fps + lookahead`` -- so a 60 s file has the 1800 frames of 60 s of video."""
    sr = cqt.spec.sample_rate
    cols = cqt.n_columns(n_samples)
    if cols == 0:
        return 0
    # frames strictly before the end of the audio: i < (n/sr - lookahead) * fps
    by_time = max(0, math.ceil((n_samples / sr - video.lookahead_ms / 1000.0) * video.fps - 1e-9))
    # frame_column is non-decreasing in i: drop frames whose column is not there yet.
    k = by_time
    while k > 0 and frame_column(k - 1, cqt.spec, video) >= cols:
        k -= 1
    return k
