"""The constant-Q front end: one CQT, offline and streaming, from the same code.

The paper (section III-A) feeds its keypoint predictor an 84x87 CQT window (~0.5 s).
Training computes the CQT of whole clips; the live engine computes it on audio chunks
as they arrive. Both run :meth:`CQT.step` (offline is a loop of it over long chunks), so
the features a model sees live are the features it was trained on, bit for bit.

The kernels are nnAudio's ``create_cqt_kernels`` (Brown & Puckette 1992, librosa
normalisation: L1-normalised periodic-Hann-windowed complex exponentials, output scaled
by sqrt(kernel length), as nnAudio's ``CQT1992v2``), evaluated without ever forming them:

* The audio is cut into hop-sized segments (column j's time is the start of segment j).
  A kernel spans whole segments plus a partial one at each end.
* On a whole segment, hann(u) e^{i w u} = 0.5 e^{i w u} - 0.25 e^{i (w +- 2 pi / l) u}: three
  plain complex exponentials. So each new segment gets one small DFT (a [hop x 3*84]
  matrix product, shared by every column that will use the segment), its rows are
  referred to a global phase (e^{i theta s}, theta = W * hop mod 2 pi, from float64
  tables), and running sums of them are kept in float64. A column's sum over its full
  segments is then the difference of two running sums, turned back to the column's own
  phase -- a handful of elementwise operations per column, whatever the kernel length.
* The partial segments at the ends of each kernel are exact dot products (one "edge"
  channel per bin and end, in the same matrix product).

A new column costs a 256-sample DFT row plus O(n_bins) arithmetic instead of a 44k-tap
dot product per bin group; nothing is recomputed over the window. Results equal the
exact kernel products to ~4e-7 of the largest magnitude (float32 DFT rows; float64 sums:
a simulated day of their growth moves the columns by ~4e-8 of the peak, tested).

Column ``j`` belongs to time ``j * hop`` samples. Where its kernels sit is set by
``AudioSpec.alignment``:

* ``causal``: bin k's taps end at the column's time (the last tap, zero by the window's
  periodicity, at ``j*hop - 1``), so column j is ready as soon as ``j*hop`` samples have
  arrived;
* ``centered``: each kernel sits exactly where nnAudio's ``CQT1992v2(center=True)``
  puts it (centred on ``j*hop``), so column j needs ~``l_max/2`` samples beyond its time.

Audio before the stream start is silence (zeros). Column 0 exists, at time 0. A signal
of N samples has the columns whose kernels end by sample N: ``(N - ahead) // hop + 1``
of them, where ``ahead`` is 0 for ``causal``.

Exactness rests on two rules: matrix products always run in fixed-shape blocks of
``SEG_BLOCK`` segments (a row's rounding then depends only on its own data), and
everything after them is elementwise IEEE arithmetic (+, -, *, sqrt) or a sequential
running sum -- no reductions whose order could depend on how many columns are computed
together, and no transcendental functions at run time.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

SEG_BLOCK = 8  # hop-sized segments per matrix product (see CQT.step)
GROUP_BINS = 12  # cqt_kernel_bank: adjacent bins sharing one kernel support


# --------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class _OctaveGroup:
    """One octave's bins: kernels embedded in a shared support ``[offset, offset+length)``."""

    first_bin: int  # index of the group's first bin
    n_bins: int  # bins in the group
    offset: int  # support start, in samples relative to the column's time
    length: int  # support length in samples


def _nnaudio_kernels(spec: AudioSpec) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """nnAudio's kernels for ``spec``: (kernels [n_bins, fft_len], fft_len, lengths,
    centre frequencies, index of each row's first nonzero tap). Not cached: the kernel
    matrix is 22 MB and only its derived plan is kept."""
    from nnAudio.utils import create_cqt_kernels

    q = 1.0 / (2.0 ** (1.0 / spec.bins_per_octave) - 1.0)
    kernels, fft_len, lengths, freqs = create_cqt_kernels(
        q, spec.sample_rate, spec.fmin, spec.n_bins, spec.bins_per_octave, norm=1, window="hann"
    )
    first_nz = np.array([int(np.flatnonzero(np.abs(kernels[k]) > 0)[0]) for k in range(spec.n_bins)])
    return kernels, int(fft_len), lengths.numpy().astype(np.int64), np.asarray(freqs), first_nz


def cqt_kernel_bank(spec: AudioSpec) -> tuple[list[_OctaveGroup], list[np.ndarray], int, int]:
    """Exact-length CQT kernels grouped by octave.

    Returns ``(groups, weights, back, ahead)``: per group a real matrix
    ``[length, 2 * n_bins]`` (real parts, then imaginary parts, librosa scaling folded in)
    and the samples a column needs before (``back``) and after (``ahead``) its time.
    """
    kernels, fft_len, lengths, _freqs, starts = _nnaudio_kernels(spec)  # starts: each row's first nonzero tap
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


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Plan:
    """How the CQT is computed from hop-sized segments (see the module docstring).

    Channels: ``3 * n_bins`` DFT channels (bin-major: bin k's exponentials m = -1, 0, +1)
    and one or two edge channels per bin (the partial first / last segment of its kernel).
    """

    hop: int
    n_bins: int
    tails: bool  # some kernel ends mid-segment (centered): a second edge channel per bin
    weights: np.ndarray  # [hop, 2 * (n_dft + n_edge)] float32: dft re | dft im | head re | head im
    #                      (| tail re | tail im)
    lo: np.ndarray  # [n_dft] relative segment of the prefix row *before* the bin's full segments
    hi: np.ndarray  # [n_dft] relative segment of the bin's last full segment
    head: np.ndarray  # [n_bins] relative segment of the head edge
    tail: np.ndarray  # [n_bins] relative segment of the tail edge (== head where unused)
    theta: np.ndarray  # [n_dft] float64: phase advance per segment, Omega * hop mod 2 pi
    ahead: int  # samples a column needs after its time
    back: int  # samples a column reaches before its time

    @property
    def n_dft(self) -> int:
        return 3 * self.n_bins

    @property
    def n_edge(self) -> int:
        return (2 if self.tails else 1) * self.n_bins


def _cis(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, element by element with the C library (NumPy's SIMD paths may round
    differently at different array offsets; these values must be the same every time)."""
    flat = angles.ravel().tolist()
    c = np.array([math.cos(a) for a in flat], np.float64).reshape(angles.shape)
    s = np.array([math.sin(a) for a in flat], np.float64).reshape(angles.shape)
    return c, s


@functools.lru_cache(maxsize=8)
def _plan(spec: AudioSpec) -> _Plan:
    H = spec.hop
    _kernels, fft_len, lengths, freqs, first_nz = _nnaudio_kernels(spec)
    # Tap u of bin k's kernel (u = 0 .. l-1, periodic Hann: tap 0 is zero) sits at sample
    # column_time + o_k + u. nnAudio(center=True) puts row index n at time n - fft_len//2.
    if spec.alignment == "causal":
        offs = -lengths - 1  # the last tap (u = l, zero by periodicity) at the column's time - 1
    else:
        offs = first_nz - 1 - fft_len // 2
    nb = spec.n_bins
    n_dft = 3 * nb
    spans = []  # per bin: (o, taps, head d, last d)
    for k in range(nb):
        o, taps = int(offs[k]), int(lengths[k]) + 1  # u = 0 .. l: periodic Hann is 0 at both ends
        spans.append((o, taps, o // H, (o + taps - 1) // H))
    tails = any((o + taps) % H and (o + taps - 1) // H != o // H for o, taps, _, _ in spans)
    n_edge = (2 if tails else 1) * nb
    dft = np.zeros((H, n_dft), np.complex128)
    edge = np.zeros((H, n_edge), np.complex128)
    lo = np.zeros(n_dft, np.int64)
    hi = np.zeros(n_dft, np.int64)
    head = np.zeros(nb, np.int64)
    tail = np.zeros(nb, np.int64)
    theta = np.zeros(n_dft, np.float64)
    v = np.arange(H, dtype=np.float64)
    for k, (o, taps, dh, de) in enumerate(spans):
        ln = int(lengths[k])
        omega = 2.0 * math.pi * float(freqs[k]) / spec.sample_rate
        hann_sum = float(np.sum(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(ln) / ln)))
        scale = math.sqrt(ln) / hann_sum  # librosa normalisation, as CQT1992v2: sqrt(ln) / L1 norm
        full, partial = [], []
        for d in range(dh, de + 1):
            a, b = max(0, o - d * H), min(H, o + taps - d * H)
            (full if (a, b) == (0, H) else partial).append((d, a, b))
        # Full segments: hann(u) e^{i w u} = sum_m a_m e^{i W_m u}, W_m = w + 2 pi m / ln.
        for i, (m, amp) in enumerate(((-1, -0.25), (0, 0.5), (1, -0.25))):
            c = 3 * k + i
            big_omega = omega + 2.0 * math.pi * m / ln
            ph = big_omega * (v - o)
            dft[:, c] = scale * amp * (np.cos(ph) + 1j * np.sin(ph))
            theta[c] = math.fmod(big_omega * H, 2.0 * math.pi)
            if full:
                lo[c], hi[c] = full[0][0] - 1, full[-1][0]
            else:  # no full segment: an empty range (the two prefix rows are the same)
                lo[c] = hi[c] = dh
        head[k] = tail[k] = dh
        for j, (d, a, b) in enumerate(partial):
            u = d * H + np.arange(a, b) - o
            w = scale * (0.5 - 0.5 * np.cos(2.0 * np.pi * u / ln)) * np.exp(1j * omega * u)
            col = k if j == 0 else nb + k
            edge[a:b, col] = w
            if j == 0:
                head[k] = d
            else:
                tail[k] = d
    edges = [edge[:, :nb].real, edge[:, :nb].imag]
    if tails:
        edges += [edge[:, nb:].real, edge[:, nb:].imag]
    weights = np.concatenate([dft.real, dft.imag, *edges], axis=1).astype(np.float32)
    ahead = max(0, max(o + taps for o, taps, _, _ in spans))
    back = -min(o + 1 for o, _, _, _ in spans)  # the first nonzero tap
    return _Plan(H, nb, tails, weights, lo, hi, head, tail, theta, ahead, back)


EPOCH = 256  # segments per phase epoch (see _epoch_table)


@functools.lru_cache(maxsize=8)
def _epoch_table(spec: AudioSpec) -> tuple[np.ndarray, np.ndarray]:
    """e^{i theta_c r} for r = 0 .. EPOCH-1: [EPOCH, n_dft] cos and sin."""
    theta = _plan(spec).theta
    ang = np.fmod(np.arange(EPOCH, dtype=np.float64)[:, None] * theta[None, :], 2.0 * math.pi)
    return _cis(ang)


def _epoch_start(spec: AudioSpec, q: int) -> tuple[np.ndarray, np.ndarray]:
    """e^{i theta_c EPOCH q}: [n_dft] cos and sin (float64 phase, reduced mod 2 pi)."""
    step = np.fmod(_plan(spec).theta * EPOCH, 2.0 * math.pi)
    return _cis(np.fmod(step * float(q), 2.0 * math.pi))


# --------------------------------------------------------------------------- the CQT


def _swap(x: Tensor, half: int) -> Tensor:
    """(re | im) -> (im | re) along the last dimension."""
    return torch.cat([x[..., half:], x[..., :half]], dim=-1)


@dataclass(frozen=True)
class CQTState:
    """A stream's carried state: what the next columns need of the past.

    pending: [B, n_samples % hop] the samples of the incomplete segment
    prefix: [B, KP, 2 * n_dft] float64 running sums of the phase-referenced DFT rows of
        the last KP complete segments (real parts, then imaginary parts)
    edges: [B, KE, 2 * n_edge] the edge rows of the last KE complete segments
    n_samples: [] int64, samples received since the stream start
    """

    pending: Tensor
    prefix: Tensor
    edges: Tensor
    n_samples: Tensor


class CQT(nn.Module):
    """CQT magnitudes of audio, per :class:`AudioSpec`; the one implementation.

    ``forward(audio)`` is the offline CQT of whole signals; :class:`StreamingCQT` is the
    same computation fed in chunks (``forward`` runs it over ``block_columns``-column
    chunks). Runs on whatever device the module is on.
    """

    def __init__(self, spec: AudioSpec, block_columns: int = 256) -> None:
        super().__init__()
        self.spec = spec
        self.block_columns = block_columns  # offline: columns per chunk
        p = _plan(spec)
        self.plan = p
        self.back = p.back  # samples a column reaches before its time
        self.ahead = p.ahead  # samples a column needs after its time (0 when causal)
        ahead_segs = -(-p.ahead // p.hop)
        # History the next column can reach: prefix rows from its lowest `lo`, edge rows
        # from its lowest head segment (relative to the column), plus the columns not yet
        # emitted (up to ahead/hop of them).
        self.keep_prefix = int(-p.lo.min()) + ahead_segs + 1
        self.keep_edges = int(-min(p.head.min(), p.tail.min())) + ahead_segs + 1
        self.register_buffer("w", torch.from_numpy(p.weights), persistent=False)
        two = lambda a: torch.from_numpy(np.concatenate([a, a]))  # noqa: E731 - re and im halves
        self.register_buffer("lo", two(p.lo), persistent=False)
        self.register_buffer("hi", two(p.hi), persistent=False)
        rel = np.concatenate([p.head, p.head, p.tail, p.tail]) if p.tails else np.concatenate([p.head, p.head])
        self.register_buffer("edge_rel", torch.from_numpy(rel), persistent=False)
        c, s = _epoch_table(spec)
        self.register_buffer("t_cos", torch.from_numpy(c), persistent=False)  # [EPOCH, n_dft]
        self.register_buffer("t_sin", torch.from_numpy(s), persistent=False)
        self._epochs: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
        self._index_cache: dict[tuple[int, str], tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def context(self) -> int:
        """Samples of audio history the next column can depend on."""
        return self.back + self.ahead + self.spec.hop - 1

    def n_columns(self, n_samples: int) -> int:
        """Columns available once ``n_samples`` samples (from the stream start) exist."""
        return max(0, (n_samples - self.ahead) // self.spec.hop + 1)

    # -- phases

    def _epoch(self, q: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """e^{i theta s} for the segments of epoch q (the table rotated by e^{i theta EPOCH q}),
        as two [EPOCH, 2 n_dft] factors A = (cos | cos), B = (-sin | sin): a (re | im) row
        times e^{i theta s} is ``row * A + swap(row) * B``."""
        key = (q, str(device))
        hit = self._epochs.get(key)
        if hit is None:
            zc, zs = (torch.from_numpy(z).to(device) for z in _epoch_start(self.spec, q))
            tc, ts = self.t_cos, self.t_sin
            c = tc * zc - ts * zs  # cos(a + b), sin(a + b): exact IEEE products and sums
            sn = tc * zs + ts * zc
            hit = (torch.cat([c, c], 1), torch.cat([-sn, sn], 1))
            if len(self._epochs) >= 3:  # 2 MB each; a step touches at most three
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = hit
        return hit

    def _phasors(self, s0: int, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """e^{i theta s} for segments s0 .. s0+count-1 as (A, B) factors [count, 2 n_dft]."""
        parts_a, parts_b = [], []
        s = s0
        while s < s0 + count:
            q, r = divmod(s, EPOCH)
            n = min(EPOCH - r, s0 + count - s)
            a, b = self._epoch(q, device)
            parts_a.append(a[r: r + n])
            parts_b.append(b[r: r + n])
            s += n
        if len(parts_a) == 1:
            return parts_a[0], parts_b[0]
        return torch.cat(parts_a), torch.cat(parts_b)

    def _indices(self, count: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(hi, lo, edge) gather indices of columns 0 .. count-1, relative to segment 0
        (cached: every frame asks for the same few counts)."""
        key = (count, str(device))
        hit = self._index_cache.get(key)
        if hit is None:
            j = torch.arange(count, device=device)[:, None]
            hit = (j + self.hi, j + self.lo, j + self.edge_rel)
            if len(self._index_cache) < 64:
                self._index_cache[key] = hit
        return hit

    # -- the computation

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> CQTState:
        p = self.plan
        return CQTState(
            pending=torch.zeros(batch, 0, device=device),
            prefix=torch.zeros(batch, self.keep_prefix, 2 * p.n_dft, dtype=torch.float64, device=device),
            edges=torch.zeros(batch, self.keep_edges, 2 * p.n_edge, device=device),
            n_samples=torch.zeros((), dtype=torch.int64, device=device),
        )

    def step(self, chunk: Tensor, state: CQTState) -> tuple[Tensor, CQTState]:
        """chunk: [B, M] audio -> (the columns it completes [B, n_bins, k], new state)."""
        p, H, R = self.plan, self.spec.hop, SEG_BLOCK
        B, M = chunk.shape
        n = int(state.n_samples)
        if M == 0:
            return chunk.new_zeros(B, p.n_bins, 0, dtype=torch.float32), state
        dev = state.prefix.device
        x = torch.cat([state.pending, chunk.to(state.pending.dtype)], dim=1)  # samples S*H .. n+M
        n2 = n + M
        S, S2 = n // H, n2 // H  # complete segments before / after
        k = S2 - S
        first = self.n_columns(n) if n > 0 else 0  # columns already emitted
        last = self.n_columns(n2)
        # A centered column can end inside the incomplete segment: its tail edge is computed
        # from the zero-filled segment (the weights past the kernel's end are zero).
        partial = p.tails and last > first and n2 > S2 * H
        rows = k + int(partial)
        prefix, edges = state.prefix, state.edges
        if rows:
            padded = -(-rows // R) * R
            if x.shape[1] == padded * H:
                seg = x
            else:
                seg = x.new_zeros(B, padded * H)
                seg[:, : min(x.shape[1], padded * H)] = x[:, : padded * H]
            # Fixed-shape blocks of R segments: a row's rounding depends on the block shape,
            # never on the other rows, so a segment's row is the same however the audio was
            # chunked (offline features equal live features bit for bit).
            blocks = seg.reshape(B * padded // R, R, H)
            out = torch.bmm(blocks, self.w.expand(blocks.shape[0], -1, -1)).reshape(B, padded, -1)
            nd2 = 2 * p.n_dft
            if k:
                h = out[:, :k, :nd2].double()  # re | im
                fa, fb = self._phasors(S, k, dev)  # reference every row to segment 0's phase
                rot = h * fa + _swap(h, p.n_dft) * fb
                prefix = torch.cat([prefix, torch.cumsum(torch.cat([prefix[:, -1:], rot], dim=1), dim=1)[:, 1:]],
                                   dim=1)
            edges = torch.cat([edges, out[:, :rows, nd2:]], dim=1)
        count = last - first
        if count > 0:
            cols = self._columns(first, count, prefix, S2 - prefix.shape[1], edges,
                                 S2 + int(partial) - edges.shape[1])
        else:
            cols = x.new_zeros(B, p.n_bins, 0)
        if partial:
            edges = edges[:, :-1]
        new = CQTState(
            pending=x[:, k * H:].contiguous(),
            prefix=prefix[:, prefix.shape[1] - self.keep_prefix:],
            edges=edges[:, edges.shape[1] - self.keep_edges:],
            n_samples=state.n_samples + M,
        )
        return cols, new

    def _columns(self, first: int, count: int, prefix: Tensor, p0: int, edges: Tensor, e0: int) -> Tensor:
        """Columns first .. first+count-1 from prefix rows (segment p0 first) and edge rows
        (segment e0 first). Elementwise float64 arithmetic only: a column's value does not
        depend on which others are computed with it."""
        p = self.plan
        B, nd, nb = prefix.shape[0], p.n_dft, p.n_bins
        hi, lo, ei = self._indices(count, prefix.device)
        hi = (hi + (first - p0)).expand(B, -1, -1)
        lo = (lo + (first - p0)).expand(B, -1, -1)
        win = torch.gather(prefix, 1, hi) - torch.gather(prefix, 1, lo)  # sums over the full segments
        fa, fb = self._phasors(first, count, prefix.device)  # back to the column's own phase
        v = (win * fa - _swap(win, nd) * fb).reshape(B, count, 2 * nb, 3)
        v = v[..., 0] + v[..., 1] + v[..., 2]  # the three exponentials of each bin: re | im
        e = torch.gather(edges, 1, (ei + (first - e0)).expand(B, -1, -1)).double()
        v = v + e[..., : 2 * nb]  # head edge
        if p.tails:
            v = v + e[..., 2 * nb:]  # tail edge
        v = v * v
        mag = torch.sqrt(v[..., :nb] + v[..., nb:]).float().transpose(1, 2)  # [B, n_bins, count]
        if self.spec.scaling == "log":
            mag = torch.log1p(mag)
        return mag

    def forward(self, audio: Tensor) -> Tensor:
        """Offline CQT. audio: [B, N] or [N] -> [B, n_bins, n_columns(N)] (or [n_bins, T])."""
        squeeze = audio.dim() == 1
        x = audio.unsqueeze(0) if squeeze else audio
        B, N = x.shape
        if N == 0:  # only the columns that need no audio (silence before the start)
            y = x.new_zeros(B, self.spec.n_bins, self.n_columns(0))
            return y[0] if squeeze else y
        state = self.init_state(B, x.device)
        chunk = self.block_columns * self.spec.hop
        parts = []
        for i in range(0, N, chunk):
            cols, state = self.step(x[:, i: i + chunk], state)
            parts.append(cols)
        y = torch.cat(parts, dim=-1)
        return y[0] if squeeze else y


# --------------------------------------------------------------------------- streaming


class StreamingCQT(nn.Module):
    """Chunked CQT with explicit state: emits exactly the offline CQT's columns.

    ``step(chunk, state)`` accepts any number of samples (1 to many seconds) and returns
    only the columns that became complete. The work per chunk is one small matrix product
    per eight new hop-sized segments plus a few elementwise operations per new column --
    nothing is recomputed over the window.
    """

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        self.spec = spec
        self.cqt = CQT(spec)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> CQTState:
        return self.cqt.init_state(batch, device)

    def step(self, chunk: Tensor, state: CQTState) -> tuple[Tensor, CQTState]:
        """chunk: [B, M] float32 audio -> (columns [B, n_bins, k], new state), k >= 0."""
        return self.cqt.step(chunk, state)

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


def windows_from_audio(audio: np.ndarray, spec: AudioSpec, video: VideoSpec, frames: int | None = None) -> np.ndarray:
    """Mono float32 audio at ``spec.sample_rate`` -> the model windows of its video frames
    ([N, n_bins, window_columns]), through the streaming CQT exactly as the engine makes
    them. ``frames``: at most this many (from the start)."""
    x = np.ascontiguousarray(np.asarray(audio, np.float32).reshape(-1))
    stream = StreamingCQT(spec)
    state = stream.init_state(1)
    cols = []
    step = spec.sample_rate  # one second a chunk
    with torch.inference_mode():
        for i in range(0, len(x), step):
            c, state = stream.step(torch.from_numpy(x[None, i:i + step]), state)
            cols.append(c)
        n = frames_available(len(x), stream.cqt, video)
        if frames is not None:
            n = min(n, frames)
        if n <= 0:
            raise ValueError(f"{len(x) / spec.sample_rate:.2f} s of audio make no video frame; give more audio")
        return frame_windows(torch.cat(cols, dim=-1)[0], spec, video, n).numpy()
