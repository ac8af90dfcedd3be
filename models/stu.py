"""STU: the Structured Temporal UNet of final video generation (paper section III-C, Fig. 3).

Per frame t:

1. a UNet encoder reads ``[V^coarse_t, H^pred_t]`` (coarse frame and DLT heatmap,
   concatenated on channels) down to bottleneck features ``F^hq_t``;
2. the CNN-GRU (a ConvGRU: a GRU whose FC layers are 3x3 convolutions) fuses them
   with the previous frame's fused features: ``F^hat_t = GRU(F^hq_t, F^hat_{t-1})``;
   this is the only recurrent state;
3. the GCN: feature vectors are bilinearly sampled (``grid_sample``) from ``F^hat_t``
   at the 67 predicted keypoints -- the graph's nodes, connected by the OpenPose
   skeleton ``EDGES`` (normalised adjacency with self loops, Kipf & Welling) -- pass
   through graph convolutions, and are splatted back into a feature map with the same
   tent kernel as the DLT (Eq. 1);
4. an audio encoder reads the CQT window; its features are tiled and joined with
   ``F^hat_t`` and the GCN map at the decoder's first layer, which fuses them;
5. the decoder upsamples with skip connections from the encoder to the output frame in
   [-1, 1] (tanh). ``out_upsample > 1`` ends in a PixelShuffle head, so the UNet can
   run at a fraction of the video size (the real-time preset works at 128 for 256 video).

``residual=True`` (the warp presets): the coarse frame -- the performer's reference warped
to the pose, :mod:`letsplay.models.warp` -- arrives at the *output* size; the encoder reads
it area-downsampled to the working size, and the head draws a correction and a gate per
output pixel: ``frame = clamp(base + sigmoid(g) * r, -1, 1)``. The head starts at zero
(no correction, the gate half open), so an untrained STU passes the warp through
exactly; training learns what to correct (holes, outlines, shading, thin parts) and can
shut the gate where the warp is right, so those pixels are copied, not re-drawn.

Table I ablations: ``use_gcn=False`` (d), ``use_gru=False`` (e), and all three of
``use_gru/use_gcn/use_audio`` off = a plain UNet (c, "w/o STU"). The Performer builds
the STU without the coarse input for (a) "w/o CVG" and without heatmap/keypoints for
(b) "w/o KHP". No normalisation layers: a frame's output depends only on its own
inputs and the carried state, in training and in streaming alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.blocks import AudioEncoder, UpConv, act, conv, kaiming_init
from letsplay.models.skeleton import normalized_adjacency, tent_profiles
from letsplay.models.spec import AudioSpec
from letsplay.models.state import State
from letsplay.models.stepping import mid_name, unroll


@dataclass(frozen=True)
class STUConfig:
    base_channels: int = 64  # UNet width at the working resolution, doubled per level
    max_channels: int = 512  # cap on the doubling
    depth: int = 4  # stride-2 levels; the bottleneck is at size / 2**depth
    convs_per_level: int = 1  # extra 3x3 convs per encoder level (and per decoder level)
    use_gru: bool = True  # CNN-GRU at the bottleneck (Table I e: off)
    use_gcn: bool = True  # GCN over keypoint-sampled features (Table I d: off)
    use_audio: bool = True  # audio features at the decoder's first layer
    gcn_hidden: int = 128  # GCN width (channels of the splatted GCN map)
    gcn_layers: int = 2  # graph convolution layers
    audio_channels: int = 128  # audio encoder (1D-CNN) width
    audio_layers: int = 3  # audio encoder stride-2 conv layers
    audio_features: int = 128  # audio feature channels tiled at the bottleneck
    out_upsample: int = 1  # PixelShuffle factor of the head (output = working size * this)
    residual: bool = False  # the coarse frame comes at the output size; the head adds a residual to it

    def __post_init__(self) -> None:
        if self.depth < 1 or self.out_upsample < 1 or self.base_channels < 1:
            raise ValueError(f"STUConfig: depth, out_upsample and base_channels must be >= 1, got "
                             f"{self.depth}, {self.out_upsample}, {self.base_channels}")

    @property
    def plain(self) -> bool:
        """True for the "w/o STU" plain UNet (no GRU, GCN or audio)."""
        return not (self.use_gru or self.use_gcn or self.use_audio)


@dataclass(frozen=True)
class STUState(State):
    gru_h: Tensor | None  # [B, C_bottleneck, h, w] fused features F^hat_{t-1}; None without GRU


class STUMid(NamedTuple):
    """What :meth:`StructuredTemporalUNet.encode` hands to ``decode`` for one frame."""

    skips: tuple[Tensor, ...]  # encoder levels 0 .. depth-1: [B, ch[i], H / 2**i, W / 2**i]
    fused: Tensor  # [B, cb, h, w] F^hat_t (F^hq_t without the GRU)
    audio: Tensor | None  # [B, audio_features]; None without the audio branch
    base: Tensor | None = None  # residual STU: the coarse frame at the output size, [-1, 1]

    def tensors(self) -> list[Tensor]:
        """The tensors named by :attr:`StructuredTemporalUNet.mid_names`, in that order."""
        return [*self.skips, self.fused, *([] if self.audio is None else [self.audio]),
                *([] if self.base is None else [self.base])]


# --------------------------------------------------------------------------- blocks


class ConvGRUCell(nn.Module):
    """GRU with 3x3 convolutions in place of FC layers (the paper's CNN-GRU)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.gates = conv(channels + hidden, 2 * hidden)
        self.cand = conv(channels + hidden, hidden)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        zr = torch.sigmoid(self.gates(torch.cat([x, h], dim=1)))
        z, r = zr.chunk(2, dim=1)  # update and reset gates
        n = torch.tanh(self.cand(torch.cat([x, r * h], dim=1)))
        return (1.0 - z) * h + z * n


def sample_at(feat: Tensor, kp: Tensor) -> Tensor:
    """Bilinear feature vectors at keypoints: ``[B, C, h, w]``, ``[B, P, 2]`` -> ``[B, P, C]``."""
    grid = (kp * 2.0 - 1.0).unsqueeze(1)  # [B, 1, P, 2] in grid_sample's [-1, 1]
    s = F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return s.squeeze(2).transpose(1, 2)  # [B, C, 1, P] -> [B, P, C]


def splat_at(values: Tensor, kp: Tensor, height: int, width: int, radius: float = 1.0) -> Tensor:
    """Write per-keypoint vectors back into a map with the DLT tent (Eq. 1):
    ``[B, P, C]``, ``[B, P, 2]`` -> ``[B, C, height, width]``."""
    py, px = tent_profiles(kp, height, width, radius)  # [B, P, h], [B, P, w]
    rows = values.transpose(1, 2).unsqueeze(-1) * py.unsqueeze(1)  # [B, C, P, h]
    return rows.transpose(-1, -2) @ px.unsqueeze(1)  # [B, C, h, P] @ [B, 1, P, w]


class SkeletonGCN(nn.Module):
    """Graph convolutions over the 67-keypoint skeleton: ``x <- act(A_hat @ x @ W)``."""

    def __init__(self, channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.register_buffer("adj", normalized_adjacency(), persistent=False)  # [67, 67]
        self.lins = nn.ModuleList(nn.Linear(channels if i == 0 else hidden, hidden) for i in range(layers))
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        B, P, C = x.shape
        for lin in self.lins:
            x = self.act(self.adj @ lin(x))  # [B, P, hidden]
        return x


# --------------------------------------------------------------------------- the module


class StructuredTemporalUNet(nn.Module):
    """STU: (coarse frame, heatmap, keypoints, CQT window) -> final frame, one per step.

    ``size`` is the working ``(height, width)`` of the inputs; the output is
    ``size * cfg.out_upsample``. ``coarse`` / ``heatmap_channels`` / ``keypoints`` say
    which inputs exist (the Table I a/b ablations drop them).
    """

    def __init__(self, cfg: STUConfig, audio: AudioSpec, size: tuple[int, int], coarse: bool = True,
                 heatmap_channels: int = 1, keypoints: bool = True) -> None:
        super().__init__()
        H, W = size
        d = cfg.depth
        if H % (2**d) or W % (2**d):
            raise ValueError(f"STU working size {size} must be divisible by 2**depth = {2**d}; "
                             f"lower STUConfig.depth or change the video size / out_upsample")
        if cfg.use_gcn and not keypoints:
            raise ValueError("STU: the GCN needs keypoints; set STUConfig.use_gcn=False without KHP")
        in_ch = (3 if coarse else 0) + heatmap_channels
        if in_ch == 0:
            raise ValueError("STU: needs a coarse frame or a heatmap as input")
        self.cfg, self.size = cfg, size
        self.has_coarse, self.heatmap_channels, self.has_keypoints = coarse, heatmap_channels, keypoints
        self.bottleneck_size = (H >> d, W >> d)
        ch = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(d + 1)]
        self.channels = ch

        def extra(c: int) -> list[nn.Module]:
            return [m for _ in range(cfg.convs_per_level) for m in (conv(c, c), act())]

        # Encoder: stem at full working size, then one stride-2 conv per level.
        self.enc = nn.ModuleList([nn.Sequential(conv(in_ch, ch[0]), act(), *extra(ch[0]))])
        for i in range(1, d + 1):
            self.enc.append(nn.Sequential(conv(ch[i - 1], ch[i], 3, 2), act(), *extra(ch[i])))
        cb = ch[d]
        self.gru = ConvGRUCell(cb, cb) if cfg.use_gru else None
        self.gcn = SkeletonGCN(cb, cfg.gcn_hidden, cfg.gcn_layers) if cfg.use_gcn else None
        self.audio_enc = (AudioEncoder(audio, cfg.audio_channels, cfg.audio_layers, cfg.audio_features)
                          if cfg.use_audio else None)
        # Decoder: the first layer fuses [F^hat, GCN map, audio]; then upsample + skip per level.
        fuse_in = cb + (cfg.gcn_hidden if cfg.use_gcn else 0) + (cfg.audio_features if cfg.use_audio else 0)
        self.dec_in = nn.Sequential(conv(fuse_in, cb), act())
        self.up = nn.ModuleList(UpConv(ch[i + 1], ch[i]) for i in range(d))
        self.merge = nn.ModuleList(
            nn.Sequential(conv(2 * ch[i], ch[i]), act(), *extra(ch[i])[2:]) for i in range(d))
        s = cfg.out_upsample
        out_ch = 4 if cfg.residual else 3  # residual: a correction and the gate that lets it through
        self.head = nn.Sequential(conv(ch[0], out_ch * s * s), nn.PixelShuffle(s)) if s > 1 else conv(ch[0], out_ch)
        kaiming_init(self)
        if cfg.residual:
            if not coarse:
                raise ValueError("STU: a residual STU refines the coarse frame; it needs the coarse input")
            last = self.head[0] if s > 1 else self.head
            nn.init.zeros_(last.weight)  # untrained: no correction, the coarse frame itself
            nn.init.zeros_(last.bias)  # the gate half open

    @property
    def mid_names(self) -> list[str]:
        """Flat names of :class:`STUMid` (``mid.skip<i>``, ``mid.fused``, ``mid.audio``): the
        ONNX front/back graphs' hand-over and a pipelined backend's."""
        return ([mid_name(f"skip{i}") for i in range(len(self.enc) - 1)] + [mid_name("fused")]
                + ([mid_name("audio")] if self.audio_enc is not None else [])
                + ([mid_name("base")] if self.cfg.residual else []))

    def mid_from(self, flat: list[Tensor]) -> STUMid:
        """The inverse of :meth:`STUMid.tensors`."""
        n = len(self.enc) - 1
        k = n + 1 + (self.audio_enc is not None)
        return STUMid(skips=tuple(flat[:n]), fused=flat[n], audio=flat[n + 1] if self.audio_enc is not None else None,
                      base=flat[k] if self.cfg.residual else None)

    @property
    def out_size(self) -> tuple[int, int]:
        s = self.cfg.out_upsample
        return self.size[0] * s, self.size[1] * s

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> STUState:
        if self.gru is None:
            return STUState(gru_h=None)
        h, w = self.bottleneck_size
        return STUState(gru_h=torch.zeros(batch, self.channels[-1], h, w, device=device))

    def step(self, coarse: Tensor | None, heatmap: Tensor | None, keypoints: Tensor | None,
             window: Tensor | None, state: STUState) -> tuple[Tensor, STUState]:
        """coarse ``[B, 3, H, W]`` (residual: ``[B, 3, H*s, W*s]``), heatmap ``[B, C, H, W]``,
        keypoints ``[B, 67, 2]``, window ``[B, n_bins, window]`` (each None where this STU
        does not use it) -> frame ``[B, 3, H*s, W*s]`` in [-1, 1]. Exactly :meth:`decode`
        of :meth:`encode`."""
        mid, new_state = self.encode(coarse, heatmap, window, state)
        return self.decode(mid, keypoints), new_state

    def encode(self, coarse: Tensor | None, heatmap: Tensor | None, window: Tensor | None,
               state: STUState) -> tuple[STUMid, STUState]:
        """Steps 1, 2 and 4: the UNet encoder, the CNN-GRU (all of the STU's state) and the
        audio encoder. :meth:`decode` needs only the result and the keypoints, so a
        pipelined host can decode frame t while it encodes frame t + 1."""
        base = None
        if self.cfg.residual and coarse is not None:
            base, s = coarse, self.cfg.out_upsample
            coarse = F.avg_pool2d(coarse, s) if s > 1 else coarse  # the encoder reads it at the working size
        ins = ([coarse] if self.has_coarse else []) + ([heatmap] if self.heatmap_channels else [])
        if any(t is None for t in ins):
            raise ValueError("STU.step: missing coarse frame or heatmap input")
        x = torch.cat(ins, dim=1)  # [B, in_ch, H, W]
        skips = []
        for enc in self.enc:
            x = enc(x)  # level i: [B, ch[i], H / 2**i, W / 2**i]
            skips.append(x)
        f = skips.pop()  # F^hq_t at the bottleneck [B, cb, h, w]
        if self.gru is not None:
            f = self.gru(f, state.gru_h)  # F^hat_t
        new_state = STUState(gru_h=f if self.gru is not None else None)
        a = None
        if self.audio_enc is not None:
            if window is None:
                raise ValueError("STU.step: this STU reads audio and needs the CQT window")
            a = self.audio_enc(window)  # [B, audio_features]
        return STUMid(skips=tuple(skips), fused=f, audio=a, base=base), new_state

    def decode(self, mid: STUMid, keypoints: Tensor | None) -> Tensor:
        """Steps 3 and 5: the GCN at the keypoints and the decoder -> the frame. Stateless."""
        f = mid.fused
        parts = [f]
        if self.gcn is not None:
            if keypoints is None:
                raise ValueError("STU.step: this STU has a GCN and needs keypoints")
            h, w = self.bottleneck_size
            nodes = self.gcn(sample_at(f, keypoints))  # [B, 67, gcn_hidden]
            parts.append(splat_at(nodes, keypoints, h, w))  # [B, gcn_hidden, h, w]
        if mid.audio is not None:
            parts.append(mid.audio[:, :, None, None].expand(-1, -1, *f.shape[2:]))
        x = self.dec_in(torch.cat(parts, dim=1))  # [B, cb, h, w]
        for i in reversed(range(len(self.up))):
            x = self.up[i](x)  # 2x upsampled: [B, ch[i], ...]
            x = self.merge[i](torch.cat([x, mid.skips[i]], dim=1))
        if mid.base is not None:  # residual: the coarse frame plus a correction where the gate lets it through
            y = self.head(x)
            return torch.clamp(mid.base + torch.sigmoid(y[:, 3:4]) * y[:, :3], -1.0, 1.0)
        return torch.tanh(self.head(x))

    def forward(self, coarse: Tensor | None, heatmap: Tensor | None, keypoints: Tensor | None,
                windows: Tensor | None, state: STUState | None = None) -> tuple[Tensor, STUState]:
        """Sequences (``[B, T, ...]`` each, or None) -> frames ``[B, T, 3, H*s, W*s]``;
        exactly a loop of :meth:`step`."""
        ref = next(t for t in (coarse, heatmap) if t is not None)
        state = self.init_state(ref.shape[0], ref.device) if state is None else state
        return unroll(self.step, state, (coarse, heatmap, keypoints, windows))

