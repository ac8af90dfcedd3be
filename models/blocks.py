"""Building blocks shared by the stages: the CQT-window audio encoder, conv helpers, init.

* :class:`AudioEncoder` -- the 1D-CNN over one CQT window (``[B, n_bins, window]``, the
  paper's 84x87) that every stage uses to read the music: KHP's "Motion Encoder"
  (section III-A), CVG's "AudioEncoder" (III-B), the STU's audio branch (III-C) and the
  audio-video discriminator. Each stage owns its own instance (own weights).
* :func:`kaiming_init` -- the paper initialises all parameters with Kaiming init (IV-A).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from letsplay.models.spec import AudioSpec

LEAK = 0.2  # LeakyReLU slope used throughout


def act() -> nn.Module:
    return nn.LeakyReLU(LEAK)


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same'-padded 2D convolution (halves the size when ``stride=2``)."""
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2)


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
