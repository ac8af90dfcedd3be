"""The streaming audio encoder: each CQT column is read once, history lives in carried state.

The paper's encoder (:class:`letsplay.models.blocks.AudioEncoder`) re-reads the whole
87-column window every frame, so each column is encoded about 15 times and the model
has no memory beyond the window. This one is causal and stateful:

1. **Column stage** (pointwise over columns, or 2-D convolutions; see below): for each of the frame's newest ``chunk``
   columns, the compressed magnitude ``x = log1p(|CQT|)`` and its spectral flux
   ``relu(x_c - x_{c-1})`` (84 + 84 values; the flux is what makes note onsets stand out,
   repeated notes included) go through two 1x1 convolutions. ``flux="max"`` takes the
   previous column's maximum over each bin and its two neighbours instead (SuperFlux,
   Boeck & Widmer 2013): a vibrato moving energy by a bin is then not an onset. ``chunk`` is the most
   columns one frame can bring: ``ceil(column_rate / fps)`` (6 at 44.1 kHz, hop 256,
   30 fps, where a frame brings 5 or 6), so at most one column in twenty is read by two
   frames.
2. **Frame feature**: the chunk's column features, in time order, through one linear
   layer -- onset timing inside the frame is kept.
3. **Temporal stage**: causal dilated convolutions over frames (kernel 2, dilations
   1, 2, 4, ...; residual), whose past inputs are the carried state ``history``. With
   4 layers a frame feature sees the last 16 frames (0.53 s), the window the paper reads.

``conv_channels`` > 0 makes the column stage three 2-D convolutions over bins and columns
(time kernels 5, 3, 3; the bins pooled by 4) reading the :data:`CONV_RECEPTIVE` columns
before each of the frame's newest ones as well, all inside the frame's window -- so a
column's feature sees a pattern in pitch and time (a new note's partials appearing, an
old one's fading), the same at every pitch. :class:`OnsetDetector` is built on it.

:meth:`StreamingAudioEncoder.step` runs one frame; :meth:`StreamingAudioEncoder.sequence`
runs a whole sequence at once (the column stage batched over frames, the temporal stage
as dilated convolutions over the sequence) and equals a loop of ``step`` for any split
of the sequence into parts, the state carried between them (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.blocks import LEAK, act
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.state import State

CONV_RECEPTIVE = 8  # columns before a column that the 2-D column stage reads (time kernels 5, 3, 3)


def chunk_columns(audio: AudioSpec, video: VideoSpec) -> int:
    """The most new CQT columns one video frame can bring: ``ceil(column_rate / fps)``."""
    return max(1, math.ceil(audio.column_rate / video.fps - 1e-9))


@dataclass(frozen=True)
class StreamingEncoderState(State):
    history: Tensor  # [B, features, sum(dilations)]: each temporal layer's last inputs, layer after layer


class StreamingAudioEncoder(nn.Module):
    """CQT columns -> one feature vector per video frame, causal, state carried.

    ``channels``: column features; ``features``: frame features (the output size);
    ``layers``: temporal layers (dilations 1, 2, 4, ... 2**(layers - 1)).
    """

    def __init__(self, audio: AudioSpec, video: VideoSpec, channels: int, features: int, layers: int,
                 flux: str = "plain", conv_channels: int = 0) -> None:
        super().__init__()
        if flux not in ("plain", "max"):
            raise ValueError(f"StreamingAudioEncoder flux must be 'plain' or 'max', got {flux!r}")
        self.flux = flux
        if layers < 0:
            raise ValueError(f"StreamingAudioEncoder needs >= 0 temporal layers, got {layers}")
        self.log1p = audio.scaling == "magnitude"
        self.n_bins = audio.n_bins
        self.chunk = chunk_columns(audio, video)
        if conv_channels < 0:
            raise ValueError(f"StreamingAudioEncoder conv_channels must be >= 0, got {conv_channels}")
        self.context = CONV_RECEPTIVE if conv_channels else 0  # columns read before the newest chunk
        if audio.window_columns < self.chunk + 1 + self.context:
            raise ValueError(f"the CQT window ({audio.window_columns} columns) must hold a frame's "
                             f"{self.chunk} newest columns and the {1 + self.context} before them")
        if conv_channels:
            self.columns: nn.Module = _ConvColumns(audio.n_bins, conv_channels, channels)
        else:
            self.columns = nn.Sequential(nn.Conv1d(2 * audio.n_bins, channels, 1), act(),
                                         nn.Conv1d(channels, channels, 1), act())
        self.frame = nn.Sequential(nn.Linear(channels * self.chunk, features), act())
        self.dilations = tuple(2 ** i for i in range(layers))
        self.temporal = nn.ModuleList(nn.Conv1d(features, features, 2, dilation=d) for d in self.dilations)
        self.features = features

    @property
    def history_len(self) -> int:
        return sum(self.dilations)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> StreamingEncoderState:
        return StreamingEncoderState(history=torch.zeros(batch, self.features, self.history_len, device=device))

    def columns_and_flux(self, window: Tensor) -> tuple[Tensor, Tensor]:
        """The frame's newest ``chunk`` columns (and the column stage's ``context`` before
        them), compressed, and their spectral flux:
        ``[N, n_bins, >= L + 1] -> ([N, n_bins, L], [N, n_bins, L])``, ``L = chunk + context``."""
        x = window[..., -(self.chunk + self.context + 1):]
        x = torch.log1p(x.clamp_min(0.0)) if self.log1p else x
        before = x[..., :-1]
        if self.flux == "max":  # against the louder neighbour bin: a vibrato's pitch wobble is no onset
            before = F.max_pool1d(before.transpose(1, 2), 3, stride=1, padding=1).transpose(1, 2)
        return x[..., 1:], torch.relu(x[..., 1:] - before)

    def _frame_features(self, window: Tensor) -> Tensor:
        """[N, n_bins, >= chunk + context + 1] -> [N, features]: column and frame stages of the newest columns."""
        x, flux = self.columns_and_flux(window)
        if self.context:
            cols = self.columns(x, flux)  # [N, channels, chunk]
        else:
            cols = self.columns(torch.cat([x, flux], dim=1))  # [N, channels, chunk]
        return self.frame(cols.flatten(1))

    def step(self, window: Tensor, state: StreamingEncoderState) -> tuple[Tensor, StreamingEncoderState]:
        """One frame: ``window [B, n_bins, W]`` (its last column the frame's newest) -> ``[B, features]``."""
        f = self._frame_features(window)
        hist, new, o = state.history, [], 0
        for conv, d in zip(self.temporal, self.dilations, strict=True):
            past = hist[..., o: o + d]  # this layer's last d inputs, oldest first
            y = F.leaky_relu(F.conv1d(torch.stack([past[..., 0], f], dim=-1), conv.weight, conv.bias), LEAK)
            new.append(torch.cat([past[..., 1:], f[..., None]], dim=-1))
            f = f + y[..., 0]
            o += d
        hist = torch.cat(new, dim=-1) if new else hist
        return f, StreamingEncoderState(history=hist)

    def sequence(self, windows: Tensor, state: StreamingEncoderState | None = None
                 ) -> tuple[Tensor, StreamingEncoderState]:
        """A sequence: ``windows [B, T, n_bins, W]`` -> ``[B, T, features]`` and the state
        after it; equal to a loop of :meth:`step` (the whole sequence in a few big ops)."""
        B, T = windows.shape[:2]
        state = self.init_state(B, windows.device) if state is None else state
        f = self._frame_features(windows.reshape(B * T, *windows.shape[2:])).reshape(B, T, -1).transpose(1, 2)
        hist, new, o = state.history, [], 0  # f: [B, features, T]
        for conv, d in zip(self.temporal, self.dilations, strict=True):
            x = torch.cat([hist[..., o: o + d], f], dim=-1)  # [B, features, d + T]
            y = F.leaky_relu(conv(x), LEAK)  # [B, features, T]: output t reads x[t] and x[t + d]
            new.append(x[..., -d:])
            f = f + y
            o += d
        hist = torch.cat(new, dim=-1) if new else hist
        return f.transpose(1, 2), StreamingEncoderState(history=hist)


class _ConvColumns(nn.Module):
    """The 2-D column stage: ``(x, flux) [N, n_bins, chunk + CONV_RECEPTIVE]`` ->
    ``[N, out, chunk]``. Three convolutions over (bins, columns), valid in time (each
    output column reads only itself and the columns before it), the bins max-pooled by 2
    after the first two, then one linear layer per column over all channels and bins."""

    def __init__(self, n_bins: int, channels: int, out: int) -> None:
        super().__init__()
        if n_bins < 4:
            raise ValueError(f"the 2-D column stage pools the bins by 4; it needs >= 4 bins, got {n_bins}")
        self.c1 = nn.Conv2d(2, channels, (5, 5), padding=(2, 0))
        self.c2 = nn.Conv2d(channels, 2 * channels, (5, 3), padding=(2, 0))
        self.c3 = nn.Conv2d(2 * channels, 2 * channels, (3, 3), padding=(1, 0))
        self.proj = nn.Linear(2 * channels * (n_bins // 2 // 2), out)

    def forward(self, x: Tensor, flux: Tensor) -> Tensor:
        h = torch.stack([x, flux], dim=1)  # [N, 2, bins, L]
        h = F.max_pool2d(F.leaky_relu(self.c1(h), LEAK), (2, 1))
        h = F.max_pool2d(F.leaky_relu(self.c2(h), LEAK), (2, 1))
        h = F.leaky_relu(self.c3(h), LEAK)  # [N, 2C, bins // 4, L - CONV_RECEPTIVE]
        return F.leaky_relu(self.proj(h.permute(0, 3, 1, 2).flatten(2)), LEAK).transpose(1, 2)


class _Detector(nn.Module):
    """A streaming encoder of its own and a linear head: the onset and pitch detectors.
    Subclasses set ``encoder`` and ``out``."""

    encoder: StreamingAudioEncoder
    out: nn.Linear

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> StreamingEncoderState:
        return self.encoder.init_state(batch, device)

    def step(self, window: Tensor, state: StreamingEncoderState) -> tuple[Tensor, StreamingEncoderState]:
        """One frame: ``window [B, n_bins, W]`` -> the head's logits ``[B, outputs]``."""
        f, state = self.encoder.step(window, state)
        return self.out(f), state

    def sequence(self, windows: Tensor, state: StreamingEncoderState | None = None
                 ) -> tuple[Tensor, StreamingEncoderState]:
        """``windows [B, T, n_bins, W]`` -> logits ``[B, T, outputs]``; equal to a loop of :meth:`step`."""
        f, state = self.encoder.sequence(windows, state)
        return self.out(f), state


class OnsetDetector(_Detector):
    """A streaming note-onset detector: the 2-D column stage (``conv_channels``), the
    temporal stage over frames (``layers``, state carried), one logit per frame.

    Trained alone first (``letsplay train --stage onset``: long random windows of the
    training clips, pitch-shifted and louder or softer, BCE against the notes' onsets), it
    finds a bowed instrument's soft, legato attacks, which the KHP's LSTM onset head
    trained with the keypoints did not; a cello's bow direction is the parity of all of them."""

    def __init__(self, audio: AudioSpec, video: VideoSpec, conv_channels: int, features: int = 96,
                 layers: int = 4, column_features: int = 64) -> None:
        super().__init__()
        self.encoder = StreamingAudioEncoder(audio, video, column_features, features, layers,
                                             conv_channels=conv_channels)
        self.out = nn.Linear(features, 1)


class PitchDetector(_Detector):
    """A streaming pitch detector: the pointwise column stage (each column's spectrum and
    flux through ``channels`` features: a learnt template over the partials), the temporal
    stage over frames (``layers``, state carried), one logit per pitch per frame.

    Trained alone (``letsplay train --stage pitch``: cross-entropy against the pitch of the
    latest note begun by ``KeypointConfig.fingering_lead_ms`` after the frame's display time),
    it names the note being played, from which the KHP's fingering state follows
    (:mod:`letsplay.models.fingering`)."""

    def __init__(self, audio: AudioSpec, video: VideoSpec, channels: int, n_pitches: int,
                 features: int = 96, layers: int = 4) -> None:
        super().__init__()
        if n_pitches < 2:
            raise ValueError(f"PitchDetector needs >= 2 pitches, got {n_pitches}")
        self.encoder = StreamingAudioEncoder(audio, video, channels, features, layers)
        self.out = nn.Linear(features, n_pitches)
