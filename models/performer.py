"""The Performer: the paper's three stages composed into one per-frame step (section III).

::

    CQT window [B, 84, 87] --KHP--> keypoints [B, 67, 2] --DLT--> heatmap [B, C, h, w]
                           --CVG--> coarse frame [B, 3, h/s, w/s] --(bilinear up)-->
    [coarse, heatmap, keypoints, window] --STU--> frame [B, 3, H, W] in [-1, 1]

One :class:`PerformerState` carries all recurrent state (``khp.lstm_h``, ``khp.lstm_c``,
``cvg.lstm_h``, ``cvg.lstm_c``, ``cvg.prev_frame``, ``stu.gru_h``); :meth:`Performer.step`
is pure, and :meth:`Performer.forward` is exactly a loop of it. The names of
``state.to_dict()`` are the flat state names of the ONNX graphs' inputs and outputs
(:mod:`letsplay.models.stepping`).

Noise: CVG's ``z`` is an explicit input (``[B, z_dim]`` per step, ``[B, T, z_dim]`` per
sequence); ``None`` = zeros, the deterministic inference default.

Checkpoints (:meth:`Performer.save` / :meth:`Performer.load`) are safetensors files: the
parameters and buffers (float32), and as metadata the config JSON (with the AudioSpec
and VideoSpec), the preset, the format version and a SHA-256 over metadata and tensors.
No pickle anywhere. Loading refuses, with a :class:`CheckpointError` that says what and
what to do: unreadable/truncated files, other formats or versions, edited metadata or
tensors (digest), tensor names/shapes that do not fit the config, and -- when the caller
passes them -- specs or a preset other than expected.

``coarse="warp"`` (the ``warp`` variant of any preset, beyond the paper) replaces the
CVG network by the performer's reference warped part by part to KHP's keypoints
(:mod:`letsplay.models.warp`, no state, no weights: the reference is a buffer saved in the
checkpoint), and the STU refines it with a residual at the video size.

Ablations (paper Tables I and II) are config fields: ``use_cvg`` (I a), ``use_khp``
(I b), ``stu.use_gru/use_gcn/use_audio`` (I c-e), ``khp.avg_condition`` and
``khp.dlt_loss`` (II); see ``models/presets.py`` for the named variants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models.coarse import CoarseConfig, CoarseState, CoarseVideoGenerator
from letsplay.models.config import DictConfig
from letsplay.models.keypoints import KeypointConfig, KeypointPredictor, KeypointState
from letsplay.models.skeleton import INSTRUMENTS, heatmap_channels
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.state import State, StateError
from letsplay.models.stepping import unroll
from letsplay.models.stu import StructuredTemporalUNet, STUConfig, STUMid, STUState
from letsplay.models.warp import LayeredWarp, Reference

log = logging.getLogger(__name__)

FORMAT = "letsplay.performer"
FORMAT_VERSION = 1
COARSE_KINDS = ("cvg", "warp")


class CheckpointError(ValueError):
    """A Performer checkpoint cannot be used: says which check failed and what to do."""


@dataclass(frozen=True)
class PerformerConfig(DictConfig):
    audio: AudioSpec = field(default_factory=AudioSpec)  # the CQT front end the model reads
    video: VideoSpec = field(default_factory=VideoSpec)  # output frame size and frame rate
    instrument: str = "cello"  # whose mean pose ("avg condition") KHP starts from
    preset: str = "custom"  # the preset it was built from ("tiny", "realtime", "paper", ...)
    use_khp: bool = True  # keypoints + heatmap stage (Table I b: off)
    use_cvg: bool = True  # coarse video stage (Table I a: off)
    coarse: str = "cvg"  # the coarse frame: "cvg" (the paper's, from audio) | "warp" (the reference, posed)
    end_to_end: bool = False  # let STU losses flow back into KHP and CVG (else their outputs are detached)
    khp: KeypointConfig = field(default_factory=KeypointConfig)
    cvg: CoarseConfig = field(default_factory=CoarseConfig)
    stu: STUConfig = field(default_factory=STUConfig)

    def __post_init__(self) -> None:
        if self.instrument not in INSTRUMENTS:
            raise ValueError(f"unknown instrument {self.instrument!r}; known: {list(INSTRUMENTS)}")
        if not (self.use_khp or self.use_cvg):
            raise ValueError("PerformerConfig: the STU needs KHP or CVG (or both); "
                             "use_khp and use_cvg cannot both be off")
        s = self.stu.out_upsample
        if self.video.height % s or self.video.width % s:
            raise ValueError(f"video size {self.video.height}x{self.video.width} is not divisible "
                             f"by stu.out_upsample={s}")
        if self.stu.use_gcn and not self.use_khp:
            raise ValueError("PerformerConfig: stu.use_gcn needs KHP's keypoints; "
                             "set stu.use_gcn=False when use_khp=False")
        if self.coarse not in COARSE_KINDS:
            raise ValueError(f"unknown coarse frame {self.coarse!r}; choose one of {list(COARSE_KINDS)}")
        if self.coarse == "warp" and not (self.use_khp and self.use_cvg):
            raise ValueError("PerformerConfig: coarse='warp' moves the reference by KHP's keypoints; it needs "
                             "use_khp and use_cvg")
        if self.stu.residual != (self.coarse == "warp" and self.use_cvg):
            raise ValueError("PerformerConfig: stu.residual goes with coarse='warp' (the STU corrects the warped "
                             "reference); set both or neither")

    @property
    def work_size(self) -> tuple[int, int]:
        """The STU's working (and heatmap) size: the video size / ``stu.out_upsample``."""
        s = self.stu.out_upsample
        return self.video.height // s, self.video.width // s


@dataclass(frozen=True)
class PerformerState(State):
    khp: KeypointState | None  # None without KHP
    cvg: CoarseState | None  # None without CVG
    stu: STUState


class PerformerOutput(NamedTuple):
    frame: Tensor  # [B, 3, H, W] final frame in [-1, 1]          (sequence: [B, T, ...])
    coarse: Tensor | None  # [B, 3, h, w] CVG frame at its own size (warp: the video size), [-1, 1]
    keypoints: Tensor | None  # [B, 67, 2] normalised (x, y)
    heatmap: Tensor | None  # [B, C, h, w] DLT heatmap at the working size


class PerformerFront(NamedTuple):
    """:meth:`Performer.step_front`'s result: the outputs known before the decoder, and
    what the decoder needs."""

    coarse: Tensor | None  # as in PerformerOutput
    keypoints: Tensor | None
    heatmap: Tensor | None
    mid: STUMid  # the STU encoder's levels, fused bottleneck and audio features


class Performer(nn.Module):
    """KHP + CVG + STU as one streaming step. Build with a :class:`PerformerConfig`
    (usually from ``letsplay.models.presets.preset(name)``)."""

    def __init__(self, cfg: PerformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        size = cfg.work_size
        self.khp = (KeypointPredictor(cfg.khp, cfg.audio, size, cfg.instrument, cfg.video) if cfg.use_khp else None)
        warp = cfg.use_cvg and cfg.coarse == "warp"
        self.cvg = CoarseVideoGenerator(cfg.cvg, cfg.audio, size) if cfg.use_cvg and not warp else None
        # the reference warped to the pose, at the video size; blank until set_reference or a checkpoint
        self.warp = LayeredWarp(cfg.instrument, (cfg.video.height, cfg.video.width)) if warp else None
        self.stu = StructuredTemporalUNet(
            cfg.stu, cfg.audio, size, coarse=cfg.use_cvg,
            heatmap_channels=heatmap_channels(cfg.khp.heatmap) if cfg.use_khp else 0,
            keypoints=cfg.use_khp)

    def set_reference(self, ref: Reference) -> None:
        """Give a warp performer its reference (what it looks like): :func:`reference_from_clip`."""
        if self.warp is None:
            raise ValueError(f"this performer (coarse={self.cfg.coarse!r}) draws no reference")
        if ref.instrument != self.cfg.instrument:
            raise ValueError(f"the reference is a {ref.instrument}, this performer plays the {self.cfg.instrument}")
        self.warp.set_reference(*(t.to(self.warp.plate.device) if isinstance(t, Tensor) else t
                                  for t in ref.tensors()))

    def coarse_of(self, keypoints: Tensor) -> Tensor:
        """The warped reference for ``keypoints`` [B, 67, 2] -> [B, 3, H, W] in [-1, 1]."""
        return self.warp(keypoints)[0] * 2.0 - 1.0

    def stages(self) -> dict[str, nn.Module]:
        """The stages present, by state prefix: ``{"khp": .., "cvg": .., "stu": ..}``."""
        return {k: m for k, m in (("khp", self.khp), ("cvg", self.cvg), ("stu", self.stu)) if m is not None}

    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> PerformerState:
        return PerformerState(
            khp=self.khp.init_state(batch, device) if self.khp is not None else None,
            cvg=self.cvg.init_state(batch, device) if self.cvg is not None else None,
            stu=self.stu.init_state(batch, device),
        )

    def state_from_dict(self, d: dict[str, Tensor]) -> PerformerState:
        """Rebuild a state from its flat names (``"khp.lstm_h"``...), checking that the
        names are exactly this model's and the shapes fit (any batch size)."""
        want = self.init_state(1).to_dict()
        missing, extra = sorted(set(want) - set(d)), sorted(set(d) - set(want))
        if missing or extra:
            raise StateError(f"state names do not fit this model: missing {missing}, unexpected "
                             f"{extra}; the state comes from a model with another configuration")
        for k, v in want.items():
            if tuple(d[k].shape[1:]) != tuple(v.shape[1:]):
                raise StateError(f"state tensor {k!r} has shape {tuple(d[k].shape)}, this model "
                                 f"needs [B, {', '.join(map(str, v.shape[1:]))}]")
        return PerformerState.from_dict(d)

    def step(self, window: Tensor, state: PerformerState, z: Tensor | None = None
             ) -> tuple[PerformerOutput, PerformerState]:
        """One video frame: window ``[B, n_bins, window_columns]``, z ``[B, z_dim]`` or None.
        Exactly :meth:`step_back` of :meth:`step_front`."""
        front, new_state = self.step_front(window, state, z)
        return self.step_back(front), new_state

    def step_front(self, window: Tensor, state: PerformerState, z: Tensor | None = None
                   ) -> tuple[PerformerFront, PerformerState]:
        """The stateful part of a frame: KHP, CVG and the STU's encoder + CNN-GRU. All of
        the new state comes from here; :meth:`step_back` (the GCN and the decoder) is
        stateless, so a host can run frame t's back half beside frame t + 1's front half."""
        B, Fq, T = window.shape
        if (Fq, T) != (self.cfg.audio.n_bins, self.cfg.audio.window_columns):
            raise ValueError(f"CQT window must be [B, {self.cfg.audio.n_bins}, "
                             f"{self.cfg.audio.window_columns}], got {tuple(window.shape)}")
        kp = hm = coarse = coarse_up = None
        khp_state = cvg_state = None
        if self.khp is not None:
            out, khp_state = self.khp.step(window, state.khp)
            kp, hm = out.keypoints, out.heatmap
        if self.cvg is not None:
            coarse, cvg_state = self.cvg.step(window, state.cvg, z)
            coarse_up = coarse
            if coarse.shape[-2:] != self.cfg.work_size:
                coarse_up = F.interpolate(coarse, size=self.cfg.work_size, mode="bilinear", align_corners=False)
        elif self.warp is not None:  # the residual STU takes it at the video size
            coarse = coarse_up = self.coarse_of(kp)
        stu_hm, stu_coarse = hm, coarse_up
        if not self.cfg.end_to_end:
            stu_hm, stu_coarse = (None if t is None else t.detach() for t in (hm, coarse_up))
        mid, stu_state = self.stu.encode(stu_coarse, stu_hm, window, state.stu)
        return (PerformerFront(coarse, kp, hm, mid),
                PerformerState(khp=khp_state, cvg=cvg_state, stu=stu_state))

    def step_back(self, front: PerformerFront) -> PerformerOutput:
        """The stateless rest of a frame (the STU's GCN and decoder) -> the outputs."""
        kp = front.keypoints
        stu_kp = kp if self.cfg.end_to_end or kp is None else kp.detach()
        frame = self.stu.decode(front.mid, stu_kp)
        return PerformerOutput(frame, front.coarse, kp, front.heatmap)

    def forward(self, windows: Tensor, state: PerformerState | None = None, z: Tensor | None = None
                ) -> tuple[PerformerOutput, PerformerState]:
        """A sequence: windows ``[B, T, n_bins, window_columns]``, z ``[B, T, z_dim]`` or None
        -> outputs stacked on dim 1, and the final state. Exactly a loop of :meth:`step`."""
        state = self.init_state(windows.shape[0], windows.device) if state is None else state
        return unroll(lambda w, zt, s: self.step(w, s, zt), state, (windows, z))

    # ----------------------------------------------------------------------- checkpoints

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write a safetensors checkpoint: tensors + config/spec metadata + digest.
        ``dtype`` (e.g. ``torch.float16``: half the file) stores the floating-point tensors
        in that type; :meth:`load` copies them back into the fp32 model."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        meta = _metadata(self.cfg)
        meta["sha256"] = _digest(meta, tensors)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        log.info("saved %s performer (%d tensors) to %s", self.cfg.preset, len(tensors), path)

    @classmethod
    def load(cls, path: str | Path, *, audio: AudioSpec | None = None, video: VideoSpec | None = None,
             preset: str | None = None, device: torch.device | str = "cpu") -> Performer:
        """Read a checkpoint written by :meth:`save`. ``audio`` / ``video`` / ``preset``,
        when given, must equal the stored ones (the engine passes the specs it runs with)."""
        cfg, tensors = read_checkpoint(path)
        for what, want, have in (("AudioSpec", audio, cfg.audio), ("VideoSpec", video, cfg.video)):
            if want is not None and want != have:
                raise CheckpointError(
                    f"{path}: the checkpoint was trained with {what} {have.to_json()}, but "
                    f"{want.to_json()} was expected; run with the checkpoint's spec or use a "
                    f"checkpoint trained for this one")
        if preset is not None and preset != cfg.preset:
            raise CheckpointError(f"{path}: the checkpoint is preset {cfg.preset!r}, expected "
                                  f"{preset!r}; pass the matching --preset or another checkpoint")
        model = cls(cfg)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        bad = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        if missing or extra or bad:
            detail = "; ".join(filter(None, [
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {extra[:5]}" if extra else "",
                ", ".join(f"{k} is {got[k]} but the config needs {expected[k]}" for k in bad[:5]),
            ]))
            raise CheckpointError(f"{path}: tensors do not fit the stored config ({detail}); the "
                                  f"file was edited or written by another letsplay version -- re-export it")
        model.load_state_dict(tensors, strict=True)
        return model.to(device)


def adopt_weights(model: Performer, source: Performer) -> dict[str, list[str]]:
    """Copy into ``model`` every tensor of ``source`` with the same name and shape (weights,
    the mean pose, the warp's reference): a preset that adds a part to a trained performer
    (the cellist's pitch detector) starts from everything that performer learnt. Returns
    ``{"taken": [...], "fresh": [...], "reshaped": [...]}`` (names; reshaped: same name,
    another shape, left fresh)."""
    mine, theirs = model.state_dict(), source.state_dict()
    out: dict[str, list[str]] = {"taken": [], "fresh": [], "reshaped": []}
    for k, v in mine.items():
        t = theirs.get(k)
        if t is None:
            out["fresh"].append(k)
        elif t.shape != v.shape:
            out["reshaped"].append(k)
        else:
            mine[k] = t.detach().to(v.dtype).clone()
            out["taken"].append(k)
    model.load_state_dict(mine, strict=True)
    log.info("adopted %d tensors; %d fresh, %d of another shape", len(out["taken"]), len(out["fresh"]),
             len(out["reshaped"]))
    return out


def _as_khp_source(cfg: PerformerConfig) -> PerformerConfig:
    """What a KHP depends on: the config with what only the frames' stages read (the
    coarse frame, the STU, the variant's name) set to defaults, so a KHP moves between a
    CVG and a warp performer of the same preset, instrument and specs."""
    return dataclasses.replace(cfg, preset=cfg.preset.split("+")[0], use_cvg=True, coarse="cvg", cvg=CoarseConfig(),
                               stu=STUConfig(), end_to_end=False)


def combine_stages(base: Performer, stages: dict[str, Performer]) -> Performer:
    """``base`` with the named stages' weights taken from other Performers, e.g.
    ``{"cvg": cvg_run}``: stages trained in separate runs (in parallel) put together before
    the STU stage, or a retrained KHP put into a finished performer.

    The sources must have the base's config, except a ``khp`` source, which may bring its
    own KHP config and lookahead (a KHP retrained with another encoder, motion heads or
    lookahead) as long as its heatmaps are the ones the base's STU reads (same layout,
    radius and alpha). The result is a new Performer; refuses other mixes and missing stages."""
    cfg = base.cfg
    khp_src = stages.get("khp")
    if khp_src is not None and khp_src.cfg != cfg:
        k = khp_src.cfg
        video = dataclasses.replace(cfg.video, lookahead_ms=k.video.lookahead_ms)
        mixed = dataclasses.replace(cfg, khp=k.khp, video=video)
        hm = ("heatmap", "heatmap_radius", "heatmap_alpha")
        if _as_khp_source(mixed) == _as_khp_source(k) and all(getattr(k.khp, f) == getattr(cfg.khp, f) for f in hm):
            cfg = mixed
    out = Performer(cfg) if cfg != base.cfg else base
    if out is not base:
        for name, mine in out.stages().items():
            if name != "khp":
                mine.load_state_dict(getattr(base, name).state_dict())
        if base.warp is not None:
            out.warp.load_state_dict(base.warp.state_dict())
    for name, other in stages.items():
        if name not in ("khp", "cvg", "stu"):
            raise ValueError(f"unknown stage {name!r}; choose khp, cvg or stu")
        same = (_as_khp_source(other.cfg) == _as_khp_source(out.cfg)) if name == "khp" else other.cfg == out.cfg
        if not same:
            raise CheckpointError(f"the {name} source has another configuration than the base "
                                  f"(preset {other.cfg.preset!r} vs {base.cfg.preset!r}, instrument "
                                  f"{other.cfg.instrument!r} vs {base.cfg.instrument!r}); train both from the same "
                                  f"preset, instrument and specs (a KHP may differ in its own settings and "
                                  f"lookahead, but must draw the heatmaps the base's STU reads)")
        mine, theirs = getattr(out, name), getattr(other, name)
        if mine is None or theirs is None:
            raise CheckpointError(f"stage {name} is missing in {'the base' if mine is None else 'its source'}")
        mine.load_state_dict(theirs.state_dict())
    return out


def _metadata(cfg: PerformerConfig) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "preset": cfg.preset,
        "instrument": cfg.instrument,
        "audio_spec": cfg.audio.to_json(),
        "video_spec": cfg.video.to_json(),
        "config": cfg.to_json(),
    }


def _digest(meta: dict[str, str], tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the metadata (without the digest) and every tensor's name, dtype,
    shape and bytes: any edit to a saved file changes it."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> tuple[PerformerConfig, dict[str, Tensor]]:
    """The config and tensors of a checkpoint, after the format, metadata and digest checks."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it is truncated, "
                              f"damaged or another format -- copy or re-save it") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a letsplay Performer checkpoint (format "
                              f"{meta.get('format')!r}); save one with Performer.save")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r}, "
                              f"this letsplay reads version {FORMAT_VERSION}; use a matching letsplay")
    if "sha256" not in meta or _digest(meta, tensors) != meta["sha256"]:
        raise CheckpointError(f"{path}: the file's contents do not match its SHA-256 digest -- it "
                              f"was modified after saving (metadata or tensors edited, or damaged); "
                              f"use the original file or re-save the model")
    try:
        cfg = PerformerConfig.from_json(meta["config"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: stored config cannot be read ({e}); re-save the model") from e
    if (meta.get("audio_spec") != cfg.audio.to_json() or meta.get("video_spec") != cfg.video.to_json()
            or meta.get("preset") != cfg.preset):
        raise CheckpointError(f"{path}: metadata specs/preset disagree with the stored config; "
                              f"re-save the model")
    return cfg, tensors
