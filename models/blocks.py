"""Building blocks shared by the stages: the CQT-window audio encoder, conv helpers, init.

* :class:`AudioEncoder` -- the 1D-CNN over one CQT window (``[B, n_bins, window]``, the
  paper's 84x87) that every stage uses to read the music: KHP's "Motion Encoder"
  (section III-A), CVG's "AudioEncoder" (III-B), the STU's audio branch (III-C) and the
  audio-video discriminator. Each stage owns its own instance (own weights).
* :class:`UpConv` -- nearest 2x upsampling, a 3x3 conv and LeakyReLU (the decoders'
  upsampling layer), computed as one sub-pixel convolution: the same function for
  4/9 of the multiply-adds.
* :func:`kaiming_init` -- the paper initialises all parameters with Kaiming init (IV-A).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.spec import AudioSpec

LEAK = 0.2  # LeakyReLU slope used throughout


def act() -> nn.Module:
    return nn.LeakyReLU(LEAK)


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same'-padded 2D convolution (halves the size when ``stride=2``)."""
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2)


# Sub-pixel form of nearest-2x-upsampling + 3x3 conv. Output row 2i + a of the upsampled
# conv reads upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. input rows {i - 1, i} (a = 0:
# taps w0 | w1 + w2) or {i, i + 1} (a = 1: taps w0 + w1 | w2). So each of the four output
# phases (a, b) is a 2x2 conv of the input, and one 2x2 conv (padding 1, one output per
# phase and channel) computes them all at (h + 1) x (w + 1). _PHASE_TAPS[a'] maps the 3
# taps of an axis to the 2 taps of the phase stored at sub-position a' = 1 - a: stored so,
# pixel_shuffle puts phase-a row r at 2r + 1 - a, and the wanted output is exactly that
# shuffle without its first and last row and column (row 2i + a sits at 2i + a + 1).
_PHASE_TAPS = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # a' = 0: phase a = 1
                            [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # a' = 1: phase a = 0


class UpConv(nn.Sequential):
    """``act(conv3x3(upsample_nearest_2x(x)))`` as one sub-pixel convolution.

    Holds an ordinary 'same' 3x3 :func:`conv` and :func:`act` (so its parameters and
    checkpoint keys are those of ``nn.Sequential(conv, act)``), but never builds the
    upsampled map: the 3x3 kernel is folded into four 2x2 phase kernels (exactly, it is
    linear in the weights, gradients included), the conv runs at the input size, and
    ``pixel_shuffle`` interleaves the phases. 16 instead of 36 multiply-adds per input
    pixel and channel pair; the result equals the direct form up to float rounding.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv(cin, cout), act())
        # a buffer, so it follows .to(device / dtype) (no host copy inside a CUDA graph
        # capture); not persistent, so checkpoints keep the keys of Sequential(conv, act)
        self.register_buffer("taps", _PHASE_TAPS.clone(), persistent=False)

        self._phase_cache: tuple[tuple, Tensor, Tensor] | None = None

    def phase_weights(self) -> tuple[Tensor, Tensor]:
        """The 2x2 phase kernels ``[cout * 4, cin, 2, 2]`` (pixel_shuffle order) and biases.

        Without autograd (inference, export) they are folded once and reused until the
        conv's weights change (their in-place version counter, storage or dtype); with
        autograd they are folded on every call, so gradients reach the 3x3 weights."""
        c: nn.Conv2d = self[0]
        key = (c.weight._version, c.bias._version, c.weight.data_ptr(), c.bias.data_ptr(), c.weight.dtype)
        if not torch.is_grad_enabled() and self._phase_cache is not None and self._phase_cache[0] == key:
            return self._phase_cache[1], self._phase_cache[2]
        w = torch.einsum("ruy,oiyx,svx->orsiuv", self.taps, c.weight, self.taps)  # [cout, 2, 2, cin, 2, 2]
        w, b = w.reshape(-1, c.in_channels, 2, 2), c.bias.repeat_interleave(4)
        self._phase_cache = None if torch.is_grad_enabled() else (key, w, b)
        return w, b

    def forward(self, x: Tensor) -> Tensor:  # [B, cin, h, w] -> [B, cout, 2h, 2w]
        w, b = self.phase_weights()
        y = F.pixel_shuffle(self[1](F.conv2d(x, w, b, padding=1)), 2)  # [B, cout, 2h + 2, 2w + 2]
        return y[:, :, 1:-1, 1:-1]

    def direct(self, x: Tensor) -> Tensor:
        """The same function the plain way (upsample, conv, act): the reference for tests."""
        return self[1](self[0](F.interpolate(x, scale_factor=2.0, mode="nearest")))


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights (LeakyReLU gain) and zero biases for every conv/linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=LEAK, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AudioEncoder(nn.Module):
    """1D-CNN over a CQT window: ``[B, n_bins, window] -> [B, out_features]``.

    The CQT bins are the channels, time is the convolved axis. ``layers`` stride-2
    convolutions (kernel 5) halve the time axis each; a linear layer reads the whole
    remaining window. Magnitude CQTs (``AudioSpec.scaling == "magnitude"``, which span
    ~0..20 for a full-scale tone) are compressed with ``log1p`` first; ``"log"`` features
    go in as they are. Stateless: each video frame's window is encoded on its own.
    """

    def __init__(self, audio: AudioSpec, channels: int, layers: int, out_features: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"AudioEncoder needs >= 1 conv layer, got {layers}")
        self.log1p = audio.scaling == "magnitude"
        blocks: list[nn.Module] = []
        cin, t = audio.n_bins, audio.window_columns
        for _ in range(layers):
            blocks += [nn.Conv1d(cin, channels, 5, stride=2, padding=2), act()]
            cin, t = channels, math.floor((t - 1) / 2) + 1
        self.convs = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels * t, out_features)
        self.act = act()
        self.out_features = out_features

    def forward(self, window: Tensor) -> Tensor:
        B, F, T = window.shape  # [B, n_bins, window_columns]
        x = torch.log1p(window.clamp_min(0.0)) if self.log1p else window
        x = self.convs(x)  # [B, channels, T']
        return self.act(self.fc(x.flatten(1)))  # [B, out_features]
