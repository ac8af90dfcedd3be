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

**Beyond the paper** (``encoder="streaming"``, ``motion_heads=True``; the ``realtime``
preset): motion that follows the music.

* The motion encoder is :class:`~letsplay.models.streaming_encoder.StreamingAudioEncoder`:
  each CQT column read once, spectral flux for onsets, history in carried state.
* **Motion heads** read the LSTM: a note-onset logit (trained against the notes played),
  and an explicit *direction state* ``q`` (1 down-bow, 0 up-bow) that flips where the
  onset probability rises through 1/2 -- a bow reverses at every note, so its direction
  is the parity of the onsets heard, which an LSTM trained on positions alone never
  learns. The flip is exact (0 / 1) in use and straight-through in training. A *travel state* ``s`` in 0..1 (the bow's
  contact point) integrates a learnt speed in the direction ``q`` gives. Two regression
  heads and a sounding logit complete :data:`MOTION_CHANNELS`. The keypoints are read from
  the LSTM *and* these, so the arm follows the direction and travel states.
* **Onset detector** (``onset_detector`` > 0, the realtime preset): a note-onset logit from
  its own streaming encoder, 2-D convolutions over the CQT's bins and columns
  (:class:`~letsplay.models.streaming_encoder.OnsetDetector`), trained first on its own
  (``train --stage onset``) and kept as it is while the rest of KHP trains
  (``--freeze-onset``). One missed or extra onset reverses a cello's bow for the rest of the
  clip, so the direction state is only as good as the onsets; the LSTM's onset head,
  trained with the keypoints, found 81 % of the cello's at 69 % precision.
* Losses (:meth:`KeypointPredictor.loss`): besides Eqs. 2-3, a velocity term (frame-to-frame
  motion, so hedging toward the mean pose costs) and the motion targets where the data
  has them (:mod:`letsplay.models.motion_targets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models import losses
from letsplay.models.blocks import AudioEncoder, act, kaiming_init
from letsplay.models.data.performer_motion import BOW_HI, BOW_LO, BOW_RETAKE_AT, BOW_RETAKE_S, BOW_RETAKE_TAU_S
from letsplay.models.fingering import check_instrument, fingering_init, fingering_read, fingering_step, pitch_classes
from letsplay.models.skeleton import (
    N_KEYPOINTS,
    RIGHT_HAND,
    HeatmapLayout,
    dlt_heatmap,
    heatmap_channels,
    mean_pose,
)
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.state import State
from letsplay.models.stepping import unroll
from letsplay.models.streaming_encoder import OnsetDetector, PitchDetector, StreamingAudioEncoder, StreamingEncoderState

# What KeypointOutput.motion holds, channel by channel (targets: letsplay.models.motion_targets):
# onset logit, direction state q (P(down-bow)), travel state s (bow contact point, 0 frog .. 1 tip),
# two instrument-specific regressions (cello: string played, stop; trombone: slide position,
# loudness), and the sounding logit.
MOTION_CHANNELS = ("onset", "direction", "travel", "aux_a", "aux_b", "sounding")
# The motion channels whose real values a training readout may take (teacher motion) and the
# motion decoder reads: the direction and travel states and the two regressions. The onset
# and sounding channels are logits, whose real values (0 / 1) are on another scale.
DECODED = (1, 2, 3, 4)
# The bowing (cello) / slide (trombone) arm: right elbow, wrist and the 21 right-hand points,
# read from the motion states alone under ``KeypointConfig.state_readout``.
STATE_READ_POINTS = (3, 4) + tuple(range(RIGHT_HAND.start, RIGHT_HAND.stop))
SMOOTHED = (2, 3, 4)  # the continuous states among them, whose frame-to-frame change the loss may hold
_RETAKE_TRAVEL = (BOW_RETAKE_AT - BOW_LO) / (BOW_HI - BOW_LO)  # the retake point as a travel state
_REST_CAP_S = 60.0  # the rest state's largest values (s)
RETAKE_GRACE_S = 0.1  # a rest still counts for the onset this long after the sound resumed (s)
ONSET_POS_WEIGHT = 4.0  # the onset BCE's weight on frames with an onset (a missed onset flips the bow late)


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
    encoder: Literal["window", "streaming"] = "window"  # the paper's window 1D-CNN, or the streaming encoder
    stream_channels: int = 64  # streaming encoder: column features
    stream_layers: int = 4  # streaming encoder: temporal layers (receptive field 2**layers frames)
    stream_flux: Literal["plain", "max"] = "plain"  # streaming encoder: onset flux against the bin or its max
    motion_heads: bool = False  # onset head, direction and travel states, motion regressions
    velocity_weight: float = 0.0  # loss: frame-to-frame keypoint motion (L2), relative to Eq. 2
    motion_weight: float = 0.0  # loss: the motion targets (BCE / L1), relative to Eq. 2
    # motion heads: hidden width of the motion decoder, an MLP from the direction, travel and
    # two regression states to keypoint offsets (0: none, only the linear readout)
    motion_decoder: int = 0
    # loss: frame-to-frame change of the travel and regression states against the real
    # change (L1), relative to the motion targets' loss: a state that jitters costs
    motion_smooth_weight: float = 0.0
    # motion heads: channels of a dedicated onset detector (2-D convolutions over the CQT's
    # bins and columns, its own temporal stage; trained first with ``train --stage onset``)
    # whose logit is the onset channel (0: the onset logit is read from the LSTM)
    onset_detector: int = 0
    # motion heads: the bowing / slide arm (right elbow, wrist and hand) is read from the
    # motion states alone, not the LSTM's hidden state; the readout does not see the onset
    # and sounding logits; and the two regressions (string and stop, slide position) are
    # read as they were at the last onset (held between onsets, as a player's string and
    # hand position are). Each of the three had made the wrist's speed ripple within a
    # stroke, a motion event at every ripple.
    state_readout: bool = False
    # state readout: channels of a pitch detector (its own streaming encoder over the CQT
    # columns; trained first with ``train --stage pitch``) whose heard pitch drives an explicit
    # fingering state (letsplay.models.fingering), which the readout reads in place of the
    # regressions: the cello's string played and the left hand's stop, by the players' rule
    # (the stop as it is, the string as it was at the last onset); the trombone's slide
    # position by the chart (as it is; the loudness stays a regression). 0: the regressions,
    # held between onsets
    pitch_detector: int = 0
    # pitch detector: its target is the note begun by this long after the frame's display
    # time (at most the lookahead), so the fingering moves this far ahead of the note, as a
    # player's hand does (the synthetic cellist's string and stop change over the 90 ms before
    # the onset: half-way 45 ms before it), and the detector has heard the rest of the lookahead
    fingering_lead_ms: float = 45.0
    # Eq. 2's form: "squared" -- the mean squared distance (smooth at zero); "distance" -- the
    # mean distance itself, as the paper writes it (||.||_2) and as the keypoint error is
    # measured: a readout unsure between two places is pulled to the likelier, not between them
    coord_loss: Literal["squared", "distance"] = "squared"
    # motion heads (the cellist): the bow is retaken after a rest, as the synthetic cellist does
    # (renderer 5, letsplay.models.data.performer_motion.BOW_RETAKE_S): a *rest state* counts the
    # silence the sounding head hears; once it has lasted BOW_RETAKE_S the travel state glides
    # toward the retake point, and the next onset starts a down-bow instead of reversing the
    # bow -- so a missed or extra onset reverses the bow only until the next rest
    bow_retake: bool = False

    def __post_init__(self) -> None:
        heatmap_channels(self.heatmap)  # validates the layout
        if self.heatmap_radius <= 0:
            raise ValueError(f"KeypointConfig.heatmap_radius must be > 0, got {self.heatmap_radius}")
        if self.encoder not in ("window", "streaming"):
            raise ValueError(f"KeypointConfig.encoder must be 'window' or 'streaming', got {self.encoder!r}")
        if self.stream_flux not in ("plain", "max"):
            raise ValueError(f"KeypointConfig.stream_flux must be 'plain' or 'max', got {self.stream_flux!r}")
        if self.velocity_weight < 0 or self.motion_weight < 0 or self.motion_smooth_weight < 0:
            raise ValueError("KeypointConfig: loss weights must be >= 0")
        if self.motion_decoder < 0 or (self.motion_decoder and not self.motion_heads):
            raise ValueError(f"KeypointConfig.motion_decoder is a hidden width >= 0 that reads the motion heads' "
                             f"states; got {self.motion_decoder} with motion_heads={self.motion_heads}")
        if self.state_readout and not self.motion_decoder:
            raise ValueError("KeypointConfig.state_readout reads the bowing / slide arm from the motion states "
                             "through the motion decoder; set motion_decoder > 0 (and motion_heads)")
        if self.pitch_detector < 0 or (self.pitch_detector and not self.state_readout):
            raise ValueError(f"KeypointConfig.pitch_detector is a channel count >= 0 for the fingering state, "
                             f"which the state readout reads; got {self.pitch_detector} with "
                             f"state_readout={self.state_readout}")
        if not self.fingering_lead_ms >= 0:
            raise ValueError(f"KeypointConfig.fingering_lead_ms must be >= 0, got {self.fingering_lead_ms}")
        if self.coord_loss not in ("squared", "distance"):
            raise ValueError(f"KeypointConfig.coord_loss must be 'squared' or 'distance', got {self.coord_loss!r}")
        if self.bow_retake and not self.motion_heads:
            raise ValueError("KeypointConfig.bow_retake is a rule of the motion heads' direction and travel "
                             "states; set motion_heads (or bow_retake=False)")
        if self.onset_detector < 0 or (self.onset_detector and not self.motion_heads):
            raise ValueError(f"KeypointConfig.onset_detector is a channel count >= 0 for the motion heads' onset "
                             f"channel; got {self.onset_detector} with motion_heads={self.motion_heads}")


@dataclass(frozen=True)
class KeypointState(State):
    lstm_h: Tensor  # [B, hidden]
    lstm_c: Tensor  # [B, hidden]
    enc: StreamingEncoderState | None = None  # the streaming encoder's history
    direction: Tensor | None = None  # [B, 1] motion heads: 1 down-bow / 0 up-bow, flips on onsets
    onset_prev: Tensor | None = None  # [B, 1] motion heads: the previous frame's onset probability
    travel: Tensor | None = None  # [B, 1] motion heads: bow contact point - 0.5 (so a fresh state is zeros)
    onset_enc: StreamingEncoderState | None = None  # the onset detector's history
    # [B, 3] state readout: the two regressions as at the last onset (with a pitch detector: the
    # fingering's string as at the last onset and its stop), and 1 once an onset has been
    # heard (before it, the held values follow the regressions)
    held: Tensor | None = None
    # [B, 3] pitch detector: the fingering (pitch heard last, string, stop; letsplay.models.fingering)
    fingering: Tensor | None = None
    pitch_enc: StreamingEncoderState | None = None  # the pitch detector's history
    # [B, 2] bow retake: the silent frames in a row up to this one, in seconds; and the seconds
    # since the last rest of BOW_RETAKE_S ended (the cap once an onset has used it)
    rest: Tensor | None = None


class KeypointOutput(NamedTuple):
    keypoints: Tensor  # [B, 67, 2] normalised (x, y)  (sequence: [B, T, 67, 2])
    heatmap: Tensor | None  # [B, C, H, W] DLT of the keypoints (sequence: [B, T, C, H, W]); None: not asked for
    motion: Tensor | None = None  # [B, 6] the MOTION_CHANNELS (motion heads only)


class KeypointPredictor(nn.Module):
    """KP + DLT: CQT window -> 67 keypoints -> heatmap, one frame per :meth:`step`.

    ``size`` is the heatmap's ``(height, width)`` (the STU's working resolution).
    """

    def __init__(self, cfg: KeypointConfig, audio: AudioSpec, size: tuple[int, int],
                 instrument: str = "cello", video: VideoSpec | None = None) -> None:
        super().__init__()
        self.cfg, self.audio, self.size = cfg, audio, size
        self.video = video or VideoSpec()
        if cfg.encoder == "streaming":
            self.motion = StreamingAudioEncoder(audio, self.video, cfg.stream_channels, cfg.audio_features,
                                                cfg.stream_layers, cfg.stream_flux)
        else:
            self.motion = AudioEncoder(audio, cfg.audio_channels, cfg.audio_layers, cfg.audio_features)
        lstm_in = cfg.audio_features
        if cfg.avg_condition:
            self.pose = nn.Sequential(nn.Linear(2 * N_KEYPOINTS, cfg.pose_features), act())
            lstm_in += cfg.pose_features
        self.lstm = nn.LSTMCell(lstm_in, cfg.hidden)
        fc_in = cfg.hidden
        if cfg.motion_heads:
            # onset, aux_a, aux_b, sounding from the LSTM (and the frame's audio feature); with
            # an onset detector, its logit is the onset channel and the heads give the other three
            self.heads = nn.Linear(cfg.hidden + cfg.audio_features, 3 if cfg.onset_detector else 4)
            self.speed = nn.Sequential(nn.Linear(cfg.hidden + 2, 32), act(), nn.Linear(32, 1))
            fc_in += len(DECODED) if cfg.state_readout else len(MOTION_CHANNELS)
        self.fc = nn.Linear(fc_in, 2 * N_KEYPOINTS)
        if cfg.state_readout:  # the bowing / slide arm's rows do not read the LSTM's hidden state
            mask = torch.ones(N_KEYPOINTS, 2, fc_in)
            mask[list(STATE_READ_POINTS), :, :cfg.hidden] = 0.0
            self.register_buffer("fc_mask", mask.reshape(2 * N_KEYPOINTS, fc_in), persistent=False)
        else:
            self.fc_mask = None
        self.onset = OnsetDetector(audio, self.video, cfg.onset_detector) if cfg.onset_detector else None
        self.pitch: PitchDetector | None = None
        self.pitch_low = 0
        self.instrument = instrument
        if cfg.pitch_detector:
            check_instrument(instrument)
            self.pitch_low, n_pitches = pitch_classes(instrument)
            self.pitch = PitchDetector(audio, self.video, cfg.pitch_detector, n_pitches,
                                       features=cfg.pitch_detector * 3 // 2)
        self.decoder = (nn.Sequential(nn.Linear(len(DECODED), cfg.motion_decoder), act(),
                                      nn.Linear(cfg.motion_decoder, cfg.motion_decoder), act(),
                                      nn.Linear(cfg.motion_decoder, 2 * N_KEYPOINTS))
                        if cfg.motion_decoder else None)
        kaiming_init(self)
        nn.init.zeros_(self.fc.weight)  # start at the mean pose (or the centre) exactly
        nn.init.zeros_(self.fc.bias)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder[-1].weight)
            nn.init.zeros_(self.decoder[-1].bias)
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
        enc = self.motion.init_state(batch, device) if self.cfg.encoder == "streaming" else None
        heads = self.cfg.motion_heads
        return KeypointState(lstm_h=z, lstm_c=z.clone(), enc=enc,
                             # before the first note: an up-bow, so the first onset starts a down-bow
                             direction=torch.zeros(batch, 1, device=device) if heads else None,
                             onset_prev=torch.zeros(batch, 1, device=device) if heads else None,
                             travel=torch.zeros(batch, 1, device=device) if heads else None,  # mid-bow
                             onset_enc=None if self.onset is None else self.onset.init_state(batch, device),
                             held=torch.zeros(batch, 3, device=device) if self.cfg.state_readout else None,
                             fingering=None if self.pitch is None else fingering_init(batch, device),
                             pitch_enc=None if self.pitch is None else self.pitch.init_state(batch, device),
                             rest=torch.zeros(batch, 2, device=device) if self.cfg.bow_retake else None)

    def reset_where(self, state: KeypointState, reset: Tensor) -> KeypointState:
        """``state`` with the rows where ``reset [B]`` is true back at the initial state."""
        return state.where(reset, self.init_state(reset.shape[0], reset.device))

    def heatmap(self, keypoints: Tensor, alpha: float | Tensor | None = None) -> Tensor:
        """DLT (Eq. 1) at this stage's size, layout and radius: ``[..., 67, 2] -> [..., C, H, W]``."""
        H, W = self.size
        a = self.cfg.heatmap_alpha if alpha is None else alpha
        return dlt_heatmap(keypoints, H, W, self.cfg.heatmap, a, self.cfg.heatmap_radius)

    def step(self, window: Tensor, state: KeypointState, with_heatmap: bool = True
             ) -> tuple[KeypointOutput, KeypointState]:
        """One frame; ``with_heatmap=False`` skips the DLT (``heatmap`` is None), for
        training KHP alone, whose loss makes its own heatmaps."""
        enc = None
        if self.cfg.encoder == "streaming":
            feat, enc = self.motion.step(window, state.enc)
        else:
            feat = self.motion(window)  # [B, audio_features]
        onset_logit = onset_enc = pitch_logits = pitch_enc = None
        if self.onset is not None:
            onset_logit, onset_enc = self.onset.step(window, state.onset_enc)
        if self.pitch is not None:
            pitch_logits, pitch_enc = self.pitch.step(window, state.pitch_enc)
        out, st = self._after_encoder(feat, state, enc, with_heatmap, onset_logit=onset_logit,
                                      pitch_logits=pitch_logits)
        return out, dataclasses.replace(st, onset_enc=onset_enc, pitch_enc=pitch_enc)

    def _after_encoder(self, audio_feat: Tensor, state: KeypointState, enc: StreamingEncoderState | None,
                       with_heatmap: bool, teacher: Tensor | None = None, motion_teacher: Tensor | None = None,
                       onset_logit: Tensor | None = None, pitch_logits: Tensor | None = None
                       ) -> tuple[KeypointOutput, KeypointState]:
        """Everything after the audio encoders for one frame; ``onset_logit [B, 1]``: the onset
        detector's, ``pitch_logits [B, n_pitches]``: the pitch detector's (when there are
        such). The returned state's ``onset_enc`` and ``pitch_enc`` are the caller's."""
        B = audio_feat.shape[0]
        feat = audio_feat
        if self.cfg.avg_condition:
            pose = self.pose(self.mean_pose.reshape(1, -1)).expand(B, -1)  # [B, pose_features]
            feat = torch.cat([feat, pose], dim=1)
        h, c = self.lstm(feat, (state.lstm_h, state.lstm_c))
        motion = direction = travel = held = fingering = rest = None
        z = h
        if self.cfg.motion_heads:
            heads = self.heads(torch.cat([h, audio_feat], dim=1))
            if onset_logit is not None:
                heads = torch.cat([onset_logit, heads], dim=1)
            onset, aux_a, aux_b, sounding = heads.split(1, dim=1)
            p = torch.sigmoid(onset)
            # an onset is where the probability rises through 1/2 (one flip for a detection that
            # spans two frames); gradients pass through the soft form p (1 - p_prev) (straight-through)
            soft = p * (1 - state.onset_prev)
            hard = ((p > 0.5) & (state.onset_prev <= 0.5)).to(p.dtype)
            flip = hard + (soft - soft.detach())  # exactly `hard` in value
            if teacher is not None:  # training: the real onsets drive the states where given (not NaN)
                flip = torch.where(torch.isnan(teacher[:, None]), flip, teacher[:, None])
            q = state.direction
            if self.cfg.bow_retake:
                # after a rest the onset starts a down-bow: flip toward 1 instead of toward 1 - q. The
                # rest counts if it ended at most RETAKE_GRACE_S ago (the sounding head may hear the
                # note a frame before the onset detector does); an onset uses it up
                run, since = state.rest[:, :1], state.rest[:, 1:]
                since = torch.where(run >= BOW_RETAKE_S - 1e-6, torch.zeros_like(since),
                                    (since + 1.0 / self.video.fps).clamp(max=_REST_CAP_S))
                retake = (since <= RETAKE_GRACE_S + 1e-6).to(q.dtype)
                direction = q + flip * (retake + (1 - retake) * (1 - q) - q)
            else:
                direction = q + flip - 2 * q * flip  # q xor flip: the bow reverses at every onset
            prev = state.travel + 0.5  # the state holds travel - 0.5: a fresh state is all zeros
            speed = F.softplus(self.speed(torch.cat([h, direction, prev], dim=1)))  # travel per second
            travel = (prev + (2 * direction - 1) * speed / self.video.fps).clamp(0.0, 1.0)
            if self.cfg.bow_retake:
                # the rest state counts the silent frames in a row; a silent frame's rest is the
                # count before it (the first silent frame: 0 s), as the data's is the time since
                # the sound ended. Kept under a minute: the glide has long arrived by then.
                silent = (torch.sigmoid(sounding) <= 0.5).to(q.dtype)
                # the retake's glide (performer_motion.bow_retake_glide), frame by frame: toward the
                # retake point by the frame's share of the rest past BOW_RETAKE_S
                glide = silent * (run - BOW_RETAKE_S).clamp(min=0.0, max=1.0 / self.video.fps)
                travel = _RETAKE_TRAVEL + (travel - _RETAKE_TRAVEL) * torch.exp(-glide / BOW_RETAKE_TAU_S)
                run = ((run + 1.0 / self.video.fps) * silent).clamp(max=_REST_CAP_S)
                since = torch.where(flip > 0.5, torch.full_like(since, _REST_CAP_S), since)
                rest = torch.cat([run, since], dim=1)
            motion = torch.cat([onset, direction, travel, aux_a, aux_b, sounding], dim=1)  # [B, 6]
            read = motion
            if self.cfg.state_readout:
                # the regressions as at the last onset (following them until the first one)
                take = (flip > 0.5) | (state.held[:, 2:] < 0.5)
                if pitch_logits is None:
                    kept = torch.where(take, torch.cat([aux_a, aux_b], dim=1), state.held[:, :2])
                else:
                    fingering = fingering_step(pitch_logits.detach(), state.fingering, self.pitch_low,
                                               self.instrument)
                    now = fingering_read(fingering, self.instrument)
                    if self.instrument == "trombone":
                        # the slide from the fingering state as soon as the note is heard (it moves
                        # ahead of the note); the loudness, a slow envelope, from its regression
                        kept = torch.cat([now[:, :1], aux_b], dim=1)
                    else:
                        # the string and stop from the fingering state instead: the stop as soon as
                        # the note is heard (the left hand goes ahead of the note), the string from one
                        # onset to the next (the bow crosses to it with the stroke: a string change
                        # between onsets would move the bowing arm off the beat)
                        kept = torch.cat([torch.where(take, now[:, :1], state.held[:, :1]), now[:, 1:]], dim=1)
                held = torch.cat([kept, torch.maximum(state.held[:, 2:], (flip > 0.5).to(flip.dtype))], dim=1)
                read = torch.cat([onset, direction, travel, kept, sounding], dim=1)
            if motion_teacher is not None:  # training: the readout takes the real states where given (not NaN)
                read = torch.where(torch.isnan(motion_teacher), read, motion_teacher)
            z = torch.cat([h, read[:, list(DECODED)] if self.cfg.state_readout else read], dim=1)
        out = self.fc(z) if self.fc_mask is None else F.linear(z, self.fc.weight * self.fc_mask, self.fc.bias)
        if self.decoder is not None:
            out = out + self.decoder(read[:, list(DECODED)])
        out = out.reshape(B, N_KEYPOINTS, 2)
        base = self.mean_pose if self.cfg.avg_condition else torch.full_like(self.mean_pose, 0.5)
        kp = base + out  # [B, 67, 2]
        return (KeypointOutput(kp, self.heatmap(kp) if with_heatmap else None, motion),
                KeypointState(lstm_h=h, lstm_c=c, enc=enc, direction=direction,
                              onset_prev=None if motion is None else p,
                              travel=None if travel is None else travel - 0.5, held=held, fingering=fingering,
                              rest=rest))

    def forward(self, windows: Tensor, state: KeypointState | None = None, with_heatmap: bool = True,
                teacher: Tensor | None = None, motion_teacher: Tensor | None = None
                ) -> tuple[KeypointOutput, KeypointState]:
        """A sequence: ``windows [B, T, n_bins, window]`` -> outputs stacked on dim 1.
        Exactly a loop of :meth:`step` from ``state`` (fresh when ``None``).

        ``teacher`` ``[B, T]`` (training, motion heads): onset probabilities that drive the
        direction and travel states instead of the onset head's, NaN where the head's are
        used -- so the keypoint output learns what a correct direction means while the onset
        head is still learning to find onsets.

        ``motion_teacher`` ``[B, T, 6]`` (training, motion heads): real motion states that the
        keypoint readout (the linear layer and the motion decoder) reads instead of the
        model's own, NaN where the model's are read; only the :data:`DECODED` channels may be
        given. The states themselves still evolve from the model's own onsets (and
        ``teacher``) and are trained by the motion loss: the readout learns what a state
        *means* (where the bow arm is for a travel, where the left hand is for a string and
        stop) instead of hedging toward the mean pose while the states are still wrong."""
        state = self.init_state(windows.shape[0], windows.device) if state is None else state
        if (teacher is not None or motion_teacher is not None) and not self.cfg.motion_heads:
            raise ValueError("teacher onsets and teacher motion are for the motion heads; this KHP has no motion heads")
        if motion_teacher is not None:
            bad = [c for c in range(len(MOTION_CHANNELS)) if c not in DECODED]
            if not bool(torch.isnan(motion_teacher[..., bad]).all()):
                raise ValueError(f"teacher motion may give only the channels "
                                 f"{[MOTION_CHANNELS[c] for c in DECODED]}; the others must be NaN")
        onsets = onset_enc = pitches = pitch_enc = None
        if self.onset is not None:
            onsets, onset_enc = self.onset.sequence(windows, state.onset_enc)  # [B, T, 1]
        if self.pitch is not None:
            pitches, pitch_enc = self.pitch.sequence(windows, state.pitch_enc)  # [B, T, n_pitches]
        if self.cfg.encoder != "streaming":
            out, last = unroll(lambda w, tt, mt, o, pp, s: self._after_encoder(self.motion(w), s, None, with_heatmap,
                                                                               tt, mt, o, pp),
                               state, (windows, teacher, motion_teacher, onsets, pitches))
            return out, dataclasses.replace(last, onset_enc=onset_enc, pitch_enc=pitch_enc)
        feats, enc = self.motion.sequence(windows, state.enc)  # every frame's audio feature at once
        out, last = unroll(lambda f, tt, mt, o, pp, s: self._after_encoder(f, s, None, with_heatmap, tt, mt, o, pp),
                           state, (feats, teacher, motion_teacher, onsets, pitches))
        return out, dataclasses.replace(last, enc=enc, onset_enc=onset_enc, pitch_enc=pitch_enc)

    def onset_logits(self, windows: Tensor) -> Tensor:
        """The onset detector alone over sequences from a fresh state: ``[B, T, n_bins, W] ->
        [B, T]`` logits (its training stage)."""
        if self.onset is None:
            raise ValueError("this KHP has no onset detector (KeypointConfig.onset_detector = 0)")
        return self.onset.sequence(windows)[0][..., 0]

    def pitch_logits(self, windows: Tensor) -> Tensor:
        """The pitch detector alone over sequences from a fresh state: ``[B, T, n_bins, W] ->
        [B, T, n_pitches]`` logits (its training stage)."""
        if self.pitch is None:
            raise ValueError("this KHP has no pitch detector (KeypointConfig.pitch_detector = 0)")
        return self.pitch.sequence(windows)[0]

    def loss(self, pred: Tensor, real: Tensor, confidence: Tensor | None = None, *,
             motion: Tensor | None = None, motion_real: Tensor | None = None,
             motion_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. 2 (+ Eq. 3 unless ``dlt_loss=False``) for keypoints ``[..., 67, 2]``, plus the
        velocity term (sequences ``[B, T, 67, 2]``, ``velocity_weight``) and the motion
        targets (``motion`` / ``motion_real`` / ``motion_mask`` ``[B, T, 6]``, ``motion_weight``).

        ``confidence`` ``[..., 67]`` (0 = keypoint missing in the data) weights every
        keypoint term; the real heatmap is the DLT of the real keypoints with it as alpha.
        Returns ``{"kp_coord": .., ["kp_vis": ..,] ["kp_vel": ..,] ["kp_motion": ..,] "kp": total}``.
        """
        coord = losses.keypoint_distance if self.cfg.coord_loss == "distance" else losses.keypoint_l2
        out = {"kp_coord": coord(pred, real, confidence)}
        total = out["kp_coord"]
        if self.cfg.dlt_loss:
            alpha = self.cfg.heatmap_alpha if confidence is None else confidence * self.cfg.heatmap_alpha
            out["kp_vis"] = losses.heatmap_l1(self.heatmap(pred, alpha), self.heatmap(real, alpha))
            total = total + self.cfg.dlt_loss_weight * out["kp_vis"]
        if self.cfg.velocity_weight > 0 and pred.dim() == 4 and pred.shape[1] > 1:
            conf = None if confidence is None else confidence[:, 1:] * confidence[:, :-1]
            out["kp_vel"] = losses.keypoint_l2(pred[:, 1:] - pred[:, :-1], real[:, 1:] - real[:, :-1], conf)
            total = total + self.cfg.velocity_weight * out["kp_vel"]
        if self.cfg.motion_weight > 0 and motion is not None and motion_real is not None:
            out["kp_motion"] = motion_loss(motion, motion_real, motion_mask, self.cfg.motion_smooth_weight)
            total = total + self.cfg.motion_weight * out["kp_motion"]
        out["kp"] = total
        return out


def motion_loss(pred: Tensor, real: Tensor, mask: Tensor | None = None, smooth_weight: float = 0.0) -> Tensor:
    """The motion heads' loss over :data:`MOTION_CHANNELS` ``[..., 6]``: BCE for the onset
    and sounding logits, L1 for the direction state (0 / 1: the share of frames it is wrong),
    travel and the two regressions; each channel averaged over its unmasked frames, then summed.

    ``smooth_weight`` > 0 (sequences ``[B, T, 6]``): plus that times the L1 of the travel and
    regression states' frame-to-frame change against the real change, over pairs of frames
    that both have the target -- a state that jitters about the right value pays for every wiggle."""
    mask = torch.ones_like(real) if mask is None else mask
    smooth = pred.new_zeros(())
    if smooth_weight > 0 and pred.dim() == 3 and pred.shape[1] > 1:
        ch = list(SMOOTHED)
        d = ((pred[:, 1:, ch] - pred[:, :-1, ch]) - (real[:, 1:, ch] - real[:, :-1, ch])).abs()
        both = mask[:, 1:, ch] * mask[:, :-1, ch]
        smooth = smooth_weight * ((d * both).flatten(0, 1).sum(0) / both.flatten(0, 1).sum(0).clamp_min(1.0)).sum()
    per = torch.stack([  # onsets are ~1 frame in 10: weighted up so missing one costs more than a false one
        F.binary_cross_entropy_with_logits(pred[..., 0], real[..., 0], reduction="none",
                                           pos_weight=pred.new_tensor(ONSET_POS_WEIGHT)),
        (pred[..., 1] - real[..., 1]).abs(),
        (pred[..., 2] - real[..., 2]).abs(),
        (pred[..., 3] - real[..., 3]).abs(),
        (pred[..., 4] - real[..., 4]).abs(),
        F.binary_cross_entropy_with_logits(pred[..., 5], real[..., 5], reduction="none"),
    ], dim=-1)
    per_channel = (per * mask).flatten(0, -2).sum(0) / mask.flatten(0, -2).sum(0).clamp_min(1.0)
    return per_channel.sum() + smooth

