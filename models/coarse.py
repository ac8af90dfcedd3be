"""CVG: coarse video generation (paper section III-B, Eq. 4, Fig. 2b).

Per frame t: the AudioEncoder reads the CQT window and an LSTM carries it over time
(``F^a_t``); the ImageEncoder -- VGG's first five layers (conv1_1, ReLU, conv1_2, ReLU,
pool1) plus two stride-2 convolutions -- reads the previously generated coarse frame
(``F^v_{t-1}``); the ImageDecoder takes ``[F^v_{t-1}, F^a_t, z]`` and upsamples to the
coarse frame ``V^coarse_t`` in [-1, 1] (tanh). Trained with the L1 of Eq. 4
(:func:`letsplay.models.losses.frame_l1`).

State: the LSTM's ``h``/``c`` and the previous coarse frame (zeros, i.e. mid-grey, at the
start of a stream unless ``init_state`` is given a first frame).

Noise ``z``: an explicit step input ``[B, z_dim]``, drawn by the caller (``randn`` when
training); ``None`` means zeros, the deterministic inference default. Keeping the noise
outside the module makes step-vs-sequence parity and ONNX export exact.

``scale`` generates at ``1/scale`` of the size it is built for (the STU's working size);
the Performer upsamples the coarse frame bilinearly for the STU. ``vgg_weights`` loads
ImageNet VGG-19 weights for the five VGG layers from a local file (never downloads);
without it the encoder trains from scratch (Kaiming init, as the paper's other layers;
the output layer starts scaled down, see ``HEAD_INIT_SCALE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from letsplay.models.blocks import AudioEncoder, UpConv, act, conv, kaiming_init
from letsplay.models.spec import AudioSpec
from letsplay.models.state import State
from letsplay.models.stepping import unroll
from letsplay.models.vgg import imagenet_normalize, load_vgg_weights, vgg19_layers

# The output conv starts at this fraction of its Kaiming scale. The previous frame is fed
# back, so CVG is a recurrent map frame -> frame; with plain Kaiming init that map is often
# expansive, and an untrained model then amplifies float rounding exponentially (torch vs
# ONNX runs diverge within ~20 frames) and starts training chaotic. Scaled down, the
# loop is contractive at init: perturbations of the state decay instead of growing.
HEAD_INIT_SCALE = 0.1


@dataclass(frozen=True)
class CoarseConfig:
    scale: int = 1  # generate at (size / scale); 1 = the STU's working size
    audio_channels: int = 128  # audio encoder (1D-CNN) width
    audio_layers: int = 3  # audio encoder stride-2 conv layers
    audio_features: int = 256  # audio feature size fed to the LSTM
    hidden: int = 256  # LSTM hidden size (F^a)
    vgg_width_div: int = 1  # VGG layers' width divisor (1 = VGG's 64 channels, ImageNet-loadable)
    vgg_weights: str | None = None  # local ImageNet VGG-19 weights (.safetensors/.npz), None = scratch
    enc_channels: int = 128  # width of the two convs after the VGG layers (F^v channels)
    z_dim: int = 16  # noise size; z is a step input, zeros when not given
    dec_channels: int = 256  # decoder width at 1/8 size, halved per 2x upsampling (min 16)
    detach_feedback: bool = True  # cut gradients through the fed-back previous frame

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"CoarseConfig.scale must be >= 1, got {self.scale}")
        if self.vgg_weights is not None and self.vgg_width_div != 1:
            raise ValueError("CoarseConfig: ImageNet vgg_weights need vgg_width_div=1")


@dataclass(frozen=True)
class CoarseState(State):
    lstm_h: Tensor  # [B, hidden]
    lstm_c: Tensor  # [B, hidden]
    prev_frame: Tensor  # [B, 3, h, w] the last generated coarse frame, [-1, 1]


class CoarseVideoGenerator(nn.Module):
    """CVG: (CQT window, previous coarse frame, z) -> coarse frame, one frame per step.

    ``size`` is the working ``(height, width)``; frames are generated at
    ``size / cfg.scale`` (:attr:`frame_size`), which must be divisible by 8.
    """

    def __init__(self, cfg: CoarseConfig, audio: AudioSpec, size: tuple[int, int]) -> None:
        super().__init__()
        self.cfg, self.audio = cfg, audio
        h, w = size[0] // cfg.scale, size[1] // cfg.scale
        if h % 8 or w % 8 or h * cfg.scale != size[0] or w * cfg.scale != size[1]:
            raise ValueError(f"CVG frame size {size} / scale {cfg.scale} must give sides "
                             f"divisible by 8; pick another scale or video size")
        self.frame_size = (h, w)
        self.audio_enc = AudioEncoder(audio, cfg.audio_channels, cfg.audio_layers, cfg.audio_features)
        self.lstm = nn.LSTMCell(cfg.audio_features, cfg.hidden)
        # ImageEncoder: VGG's first five layers (-> 1/2 size), two stride-2 convs (-> 1/8).
        self.vgg = vgg19_layers(5, cfg.vgg_width_div)
        vgg_out = self.vgg[2].out_channels
        e = cfg.enc_channels
        self.enc = nn.Sequential(conv(vgg_out, e, 3, 2), act(), conv(e, e, 3, 2), act())
        # ImageDecoder: [F^v, tiled projection of (F^a, z)] at 1/8 -> three 2x upsamplings.
        self.audio_proj = nn.Sequential(nn.Linear(cfg.hidden + cfg.z_dim, e), act())
        chans = [max(16, cfg.dec_channels >> i) for i in range(4)]  # 1/8, 1/4, 1/2, 1
        self.dec_in = nn.Sequential(conv(2 * e, chans[0]), act())
        self.ups = nn.ModuleList(UpConv(chans[i], chans[i + 1]) for i in range(3))
        self.head = conv(chans[3], 3)
        kaiming_init(self)
        with torch.no_grad():  # a contractive frame-feedback loop at init (see the docstring)
            self.head.weight.mul_(HEAD_INIT_SCALE)
        if cfg.vgg_weights is not None:
            load_vgg_weights(self.vgg, cfg.vgg_weights)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None,
                   first_frame: Tensor | None = None) -> CoarseState:
        """Fresh state; ``first_frame`` ``[B, 3, h, w]`` seeds the fed-back frame (else grey)."""
        h, w = self.frame_size
        z = torch.zeros(batch, self.cfg.hidden, device=device)
        prev = torch.zeros(batch, 3, h, w, device=device) if first_frame is None else first_frame
        if tuple(prev.shape) != (batch, 3, h, w):
            raise ValueError(f"first_frame must be [{batch}, 3, {h}, {w}], got {tuple(prev.shape)}")
        return CoarseState(lstm_h=z, lstm_c=z.clone(), prev_frame=prev)

    def step(self, window: Tensor, state: CoarseState, z: Tensor | None = None
             ) -> tuple[Tensor, CoarseState]:
        """window ``[B, n_bins, window]``, z ``[B, z_dim]`` or None -> coarse ``[B, 3, h, w]``."""
        B = window.shape[0]
        h, w = self.frame_size
        fa, ca = self.lstm(self.audio_enc(window), (state.lstm_h, state.lstm_c))  # F^a_t [B, hidden]
        fv = self.enc(self.vgg(imagenet_normalize(state.prev_frame)))  # F^v_{t-1} [B, e, h/8, w/8]
        if z is None:
            z = fa.new_zeros(B, self.cfg.z_dim)
        a = self.audio_proj(torch.cat([fa, z], dim=1))  # [B, e]
        x = torch.cat([fv, a[:, :, None, None].expand(-1, -1, *fv.shape[2:])], dim=1)
        x = self.dec_in(x)  # [B, chans[0], h/8, w/8]
        for up in self.ups:
            x = up(x)  # 2x upsampled
        frame = torch.tanh(self.head(x))  # [B, 3, h, w]
        prev = frame.detach() if self.cfg.detach_feedback else frame
        return frame, CoarseState(lstm_h=fa, lstm_c=ca, prev_frame=prev)

    def forward(self, windows: Tensor, state: CoarseState | None = None, z: Tensor | None = None
                ) -> tuple[Tensor, CoarseState]:
        """windows ``[B, T, n_bins, window]``, z ``[B, T, z_dim]`` or None ->
        ``[B, T, 3, h, w]``; exactly a loop of :meth:`step`."""
        state = self.init_state(windows.shape[0], windows.device) if state is None else state
        return unroll(lambda w, zt, s: self.step(w, s, zt), state, (windows, z))
