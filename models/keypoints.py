"""KHP: keypoint and heatmap prediction (paper section III-A, Eqs. 1-3, Table II).

Per video frame: the CQT window ``[B, 84, 87]`` goes through a 1D-CNN motion encoder;
the instrument's mean pose (the "avg condition", 67 x 2) through a linear layer; the two
features are concatenated and fed to an LSTM (one step per frame, state carried) and an
FC layer, which predicts the 67 keypoints as offsets from the mean pose. The DLT
(Eq. 1, :func:`letsplay.models.skeleton.dlt_heatmap`) turns them into a heatmap for the
STU. Training losses: Eq. 2 (L2 on coordinates) + Eq. 3 (L1 on DLT heatmaps), see
:meth:`KeypointPredictor.loss`.

Table II ablations: ``avg_condition=False`` (the baseline without the mean pose: no
mean-pose input and absolute coordinates, initialised at the frame centre) and
``dlt_loss=False`` (Eq. 2 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from letsplay.models import losses
from letsplay.models.blocks import AudioEncoder, act, kaiming_init
from letsplay.models.skeleton import N_KEYPOINTS, HeatmapLayout, dlt_heatmap, heatmap_channels, mean_pose
from letsplay.models.spec import AudioSpec
from letsplay.models.state import State
from letsplay.models.stepping import unroll


@dataclass(frozen=True)
class KeypointConfig:
    audio_channels: int = 128  # motion encoder (1D-CNN) width
    audio_layers: int = 3  # motion encoder stride-2 conv layers
    audio_features: int = 256  # motion feature size
    pose_features: int = 64  # mean-pose ("avg condition") feature size
    hidden: int = 256  # LSTM hidden size
    avg_condition: bool = True  # Table II: feed the mean pose and predict offsets from it
    dlt_loss: bool = True  # Table II: add the Eq. 3 heatmap L1 to the Eq. 2 coordinate L2
    dlt_loss_weight: float = 1.0  # weight of Eq. 3 relative to Eq. 2
    heatmap: HeatmapLayout = "sum"  # DLT channels: "sum" (paper), "parts" (7) or "keypoints" (67)
    heatmap_radius: float = 1.0  # DLT tent radius in heatmap pixels (paper: 1)
    heatmap_alpha: float = 1.0  # DLT intensity alpha (paper: 1)

    def __post_init__(self) -> None:
        heatmap_channels(self.heatmap)  # validates the layout
        if self.heatmap_radius <= 0:
            raise ValueError(f"KeypointConfig.heatmap_radius must be > 0, got {self.heatmap_radius}")


@dataclass(frozen=True)
class KeypointState(State):
    lstm_h: Tensor  # [B, hidden]
    lstm_c: Tensor  # [B, hidden]


class KeypointOutput(NamedTuple):
    keypoints: Tensor  # [B, 67, 2] normalised (x, y)  (sequence: [B, T, 67, 2])
    heatmap: Tensor | None  # [B, C, H, W] DLT of the keypoints (sequence: [B, T, C, H, W]); None: not asked for


class KeypointPredictor(nn.Module):
    """KP + DLT: CQT window -> 67 keypoints -> heatmap, one frame per :meth:`step`.

    ``size`` is the heatmap's ``(height, width)`` (the STU's working resolution).
    """

    def __init__(self, cfg: KeypointConfig, audio: AudioSpec, size: tuple[int, int],
                 instrument: str = "cello") -> None:
        super().__init__()
        self.cfg, self.audio, self.size = cfg, audio, size
        self.motion = AudioEncoder(audio, cfg.audio_channels, cfg.audio_layers, cfg.audio_features)
        lstm_in = cfg.audio_features
        if cfg.avg_condition:
            self.pose = nn.Sequential(nn.Linear(2 * N_KEYPOINTS, cfg.pose_features), act())
            lstm_in += cfg.pose_features
        self.lstm = nn.LSTMCell(lstm_in, cfg.hidden)
        self.fc = nn.Linear(cfg.hidden, 2 * N_KEYPOINTS)
        kaiming_init(self)
        nn.init.zeros_(self.fc.weight)  # start at the mean pose (or the centre) exactly
        nn.init.zeros_(self.fc.bias)
        # The avg condition; a buffer so a checkpoint carries the dataset mean it was trained with.
        self.register_buffer("mean_pose", torch.from_numpy(mean_pose(instrument)))

    @property
    def heatmap_channels(self) -> int:
        return heatmap_channels(self.cfg.heatmap)

    def set_mean_pose(self, pose: np.ndarray | Tensor) -> None:
        """Replace the avg condition, e.g. by the training set's mean keypoints ``[67, 2]``."""
        p = torch.as_tensor(np.asarray(pose, dtype=np.float32))
        if p.shape != (N_KEYPOINTS, 2):
            raise ValueError(f"mean pose must be [{N_KEYPOINTS}, 2], got {tuple(p.shape)}")
        self.mean_pose.copy_(p)

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> KeypointState:
        z = torch.zeros(batch, self.cfg.hidden, device=device)
        return KeypointState(lstm_h=z, lstm_c=z.clone())

    def heatmap(self, keypoints: Tensor, alpha: float | Tensor | None = None) -> Tensor:
        """DLT (Eq. 1) at this stage's size, layout and radius: ``[..., 67, 2] -> [..., C, H, W]``."""
        H, W = self.size
        a = self.cfg.heatmap_alpha if alpha is None else alpha
        return dlt_heatmap(keypoints, H, W, self.cfg.heatmap, a, self.cfg.heatmap_radius)

    def step(self, window: Tensor, state: KeypointState, with_heatmap: bool = True
             ) -> tuple[KeypointOutput, KeypointState]:
        """One frame; ``with_heatmap=False`` skips the DLT (``heatmap`` is None), for
        training KHP alone, whose loss makes its own heatmaps."""
        B, F, T = window.shape  # [B, n_bins, window_columns]
        feat = self.motion(window)  # [B, audio_features]
        if self.cfg.avg_condition:
            pose = self.pose(self.mean_pose.reshape(1, -1)).expand(B, -1)  # [B, pose_features]
            feat = torch.cat([feat, pose], dim=1)
        h, c = self.lstm(feat, (state.lstm_h, state.lstm_c))
        out = self.fc(h).reshape(B, N_KEYPOINTS, 2)
        base = self.mean_pose if self.cfg.avg_condition else torch.full_like(self.mean_pose, 0.5)
        kp = base + out  # [B, 67, 2]
        return KeypointOutput(kp, self.heatmap(kp) if with_heatmap else None), KeypointState(lstm_h=h, lstm_c=c)

    def forward(self, windows: Tensor, state: KeypointState | None = None, with_heatmap: bool = True
                ) -> tuple[KeypointOutput, KeypointState]:
        """A sequence: ``windows [B, T, n_bins, window]`` -> outputs stacked on dim 1.
        Exactly a loop of :meth:`step` from ``state`` (fresh when ``None``)."""
        state = self.init_state(windows.shape[0], windows.device) if state is None else state
        return unroll(lambda w, s: self.step(w, s, with_heatmap), state, (windows,))

    def loss(self, pred: Tensor, real: Tensor, confidence: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. 2 (+ Eq. 3 unless ``dlt_loss=False``) for keypoints ``[..., 67, 2]``.

        ``confidence`` ``[..., 67]`` (0 = keypoint missing in the data) weights both terms;
        the real heatmap is the DLT of the real keypoints with it as alpha.
        Returns ``{"kp_coord": .., ["kp_vis": ..,] "kp": total}``.
        """
        out = {"kp_coord": losses.keypoint_l2(pred, real, confidence)}
        total = out["kp_coord"]
        if self.cfg.dlt_loss:
            alpha = self.cfg.heatmap_alpha if confidence is None else confidence * self.cfg.heatmap_alpha
            out["kp_vis"] = losses.heatmap_l1(self.heatmap(pred, alpha), self.heatmap(real, alpha))
            total = total + self.cfg.dlt_loss_weight * out["kp_vis"]
        out["kp"] = total
        return out

