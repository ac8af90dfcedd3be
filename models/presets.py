"""Named Performer configurations, and the paper's ablation variants.

* ``tiny`` -- 32x32 frames, a few thousand parameters per stage: unit tests, CI,
  smoke runs (milliseconds per frame on a CPU).
* ``realtime`` -- 256x256 video at >= 30 fps on a 2-core CPU through onnxruntime. The
  STU works at 128x128 (8..128 channels over 4 levels) and ends in a PixelShuffle head
  to 256; CVG generates at 64x64 with a narrowed VGG prefix; the heatmap has one channel
  per body part (7) instead of 67. Sized by measurement on the slowest machine this
  project has run on (a 2-core AVX2 AMD EPYC at 2 GHz, ~67 GFLOP/s fp32 GEMM on both
  cores): 0.99 GFLOP/frame (0.85 since the decoders' upsampling layers are sub-pixel
  :class:`~letsplay.models.blocks.UpConv`), ~2.9 M parameters, ~20 ms per frame in onnxruntime, 43 ms in
  torch eager (narrow layers leave eager torch dominated by per-op overhead). Measured
  there in the same run: 16..256 channels (3.3 GFLOP) 54 ms onnxruntime / 84 ms torch;
  12..192 with one conv per level (1.6 GFLOP) 29 / 54 ms.
* ``paper`` -- the paper's setting: 256x256 everywhere, full-width VGG prefix in CVG
  (ImageNet-loadable), a 64..512-channel STU with a 8x8 bottleneck, one summed heatmap.

``ablate(cfg, name)`` gives the Table I / Table II variants of any preset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from letsplay.models.coarse import CoarseConfig
from letsplay.models.fingering import FINGERING_INSTRUMENTS
from letsplay.models.keypoints import KeypointConfig
from letsplay.models.performer import PerformerConfig
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.stu import STUConfig

PRESETS: tuple[str, ...] = ("tiny", "realtime", "paper")

# KHP that follows the music (tiny and realtime; the paper preset keeps the paper's KP):
# the streaming audio encoder, the onset / direction / travel motion heads, and the
# velocity and motion-target losses.
_MOTION_KHP: dict[str, object] = {"encoder": "streaming", "motion_heads": True, "velocity_weight": 20.0,
                                  "motion_weight": 0.05}


def _pitch_detector(instrument: str, channels: int) -> int:
    """The pitch detector's channels for ``instrument``: the fingering state (the cellist's
    string and stop, the trombonist's slide; letsplay.models.fingering) reads it."""
    return channels if instrument in FINGERING_INSTRUMENTS else 0


def _tiny(audio: AudioSpec, video: VideoSpec | None, instrument: str) -> PerformerConfig:
    video = video or VideoSpec(height=32, width=32)
    return PerformerConfig(
        audio=audio, video=video, instrument=instrument, preset="tiny",
        khp=KeypointConfig(audio_channels=16, audio_layers=2, audio_features=32, pose_features=8,
                           hidden=32, heatmap="parts", heatmap_radius=1.0, **_MOTION_KHP,
                           stream_channels=16, stream_layers=2, motion_decoder=8, onset_detector=4,
                           state_readout=True, pitch_detector=_pitch_detector(instrument, 8),
                           bow_retake=instrument == "cello"),
        cvg=CoarseConfig(scale=1, audio_channels=16, audio_layers=2, audio_features=32, hidden=32,
                         vgg_width_div=16, enc_channels=8, z_dim=4, dec_channels=16),
        stu=STUConfig(base_channels=8, max_channels=32, depth=2, convs_per_level=1, gcn_hidden=8,
                      gcn_layers=2, audio_channels=16, audio_layers=2, audio_features=8),
    )


def _realtime(audio: AudioSpec, video: VideoSpec | None, instrument: str) -> PerformerConfig:
    video = video or VideoSpec(height=256, width=256)
    return PerformerConfig(
        audio=audio, video=video, instrument=instrument, preset="realtime",
        khp=KeypointConfig(audio_channels=64, audio_layers=3, audio_features=128, pose_features=32,
                           hidden=128, heatmap="parts", heatmap_radius=2.0, **_MOTION_KHP,
                           stream_channels=64, stream_layers=4, motion_decoder=64, motion_smooth_weight=4.0,
                           onset_detector=16, state_readout=True, pitch_detector=_pitch_detector(instrument, 64),
                           coord_loss="distance", bow_retake=instrument == "cello"),
        cvg=CoarseConfig(scale=2, audio_channels=64, audio_layers=3, audio_features=128, hidden=128,
                         vgg_width_div=4, enc_channels=64, z_dim=16, dec_channels=128),
        stu=STUConfig(base_channels=8, max_channels=128, depth=4, convs_per_level=2, gcn_hidden=32,
                      gcn_layers=2, audio_channels=64, audio_layers=3, audio_features=32,
                      out_upsample=2),
    )


def _paper(audio: AudioSpec, video: VideoSpec | None, instrument: str) -> PerformerConfig:
    video = video or VideoSpec(height=256, width=256)
    return PerformerConfig(
        audio=audio, video=video, instrument=instrument, preset="paper",
        khp=KeypointConfig(audio_channels=128, audio_layers=3, audio_features=256, pose_features=64,
                           hidden=256, heatmap="sum", heatmap_radius=1.0),
        cvg=CoarseConfig(scale=1, audio_channels=128, audio_layers=3, audio_features=256, hidden=256,
                         vgg_width_div=1, enc_channels=128, z_dim=16, dec_channels=256),
        stu=STUConfig(base_channels=64, max_channels=512, depth=5, convs_per_level=1, gcn_hidden=128,
                      gcn_layers=2, audio_channels=128, audio_layers=3, audio_features=128),
    )


_BUILDERS: dict[str, Callable[[AudioSpec, VideoSpec | None, str], PerformerConfig]] = {
    "tiny": _tiny, "realtime": _realtime, "paper": _paper,
}


def preset(name: str, instrument: str = "cello", audio: AudioSpec | None = None,
           video: VideoSpec | None = None) -> PerformerConfig:
    """The named preset's config. ``audio`` defaults to ``AudioSpec()``; ``video`` to the
    preset's own frame size at 30 fps (another size must suit the preset's strides)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return _BUILDERS[name](audio or AudioSpec(), video, instrument)


def _stu(cfg: PerformerConfig, **kw: object) -> PerformerConfig:
    return dataclasses.replace(cfg, stu=dataclasses.replace(cfg.stu, **kw))


def _khp(cfg: PerformerConfig, **kw: object) -> PerformerConfig:
    return dataclasses.replace(cfg, khp=dataclasses.replace(cfg.khp, **kw))


# Paper Table I (a-e) and Table II variants.
ABLATIONS: dict[str, Callable[[PerformerConfig], PerformerConfig]] = {
    "no_cvg": lambda c: dataclasses.replace(c, use_cvg=False, coarse="cvg",
                                            stu=dataclasses.replace(c.stu, residual=False)),  # I (a) w/o CVG
    "no_khp": lambda c: dataclasses.replace(c, use_khp=False, coarse="cvg",
                                            stu=dataclasses.replace(c.stu, use_gcn=False, residual=False)),  # I (b)
    "no_stu": lambda c: _stu(c, use_gru=False, use_gcn=False, use_audio=False),  # I (c) plain UNet
    "no_gcn": lambda c: _stu(c, use_gcn=False),  # I (d)
    "no_gru": lambda c: _stu(c, use_gru=False),  # I (e) w/o CNN-GRU
    "kp_no_avg": lambda c: _khp(c, avg_condition=False),  # II without the avg condition
    "kp_no_dlt": lambda c: _khp(c, dlt_loss=False),  # II without the DLT loss
    # the paper's KP inside a preset that follows the music: its window encoder, no motion heads
    "kp_paper": lambda c: _khp(c, encoder="window", motion_heads=False, velocity_weight=0.0, motion_weight=0.0,
                               motion_decoder=0, onset_detector=0, state_readout=False, pitch_detector=0,
                               bow_retake=False),
    # the streaming encoder, no motion heads
    "kp_no_motion": lambda c: _khp(c, motion_heads=False, motion_weight=0.0, motion_decoder=0, onset_detector=0,
                                   state_readout=False, pitch_detector=0, bow_retake=False),
    # the string and stop from the regressions held between onsets, not from the heard pitch's fingering
    "kp_no_fingering": lambda c: _khp(c, pitch_detector=0),
    # the cellist's bow reversing at every onset, never retaken after a rest
    "kp_no_retake": lambda c: _khp(c, bow_retake=False),
    # beyond the paper: the coarse frame is the performer's reference warped to the pose, the STU a residual
    "warp": lambda c: dataclasses.replace(c, coarse="warp", use_cvg=True,
                                          stu=dataclasses.replace(c.stu, residual=True)),
    # the paper's coarse frame, from audio and the previous frame
    "cvg_audio": lambda c: dataclasses.replace(c, coarse="cvg", stu=dataclasses.replace(c.stu, residual=False)),
}


def ablate(cfg: PerformerConfig, name: str) -> PerformerConfig:
    """``cfg`` with one paper ablation applied; the preset name gets ``+name``."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {list(ABLATIONS)}")
    out = ABLATIONS[name](cfg)
    return dataclasses.replace(out, preset=f"{cfg.preset}+{name}")
