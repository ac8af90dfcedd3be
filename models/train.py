"""Stage-wise training of the Performer (paper section III and IV-A).

Stages, in the paper's order (``--stage all`` runs them one after another, splitting the
step budget by :attr:`TrainConfig.stage_fractions`):

* ``onset`` -- (before ``kp``, for a KHP with an onset detector) the detector alone: BCE
  against the notes' onsets on long windows, pitch-shifted and louder or softer at random;
* ``kp``  -- KHP alone: Eq. 2 (L2 on coordinates) + Eq. 3 (L1 on DLT heatmaps);
* ``cvg`` -- CVG alone: Eq. 4 (L1) on *rolled-out* sequences: every step feeds back the
  frame CVG generated itself (as in streaming), starting from grey, with noise ``z``;
* ``stu`` -- STU with KHP and CVG frozen: L1 + perceptual (Eq. 7) + adversarial (Eq. 5)
  against the audio-video discriminator, which trains with Eq. 6 (with mismatched audio);
* ``e2e`` -- optional end-to-end fine-tuning: all stages, all losses, STU gradients
  flowing back into KHP and CVG (``PerformerConfig.end_to_end``).

Adam, learning rate 1e-3 decaying exponentially to 1.25e-4 over each stage (IV-A: "from
0.001 gradually decreasing to 0.000125"); Kaiming init is done by the modules.

``resume=True`` continues from the newest complete checkpoint exactly: the same batches,
noise and updates, so the loss sequence equals an uninterrupted run's (tested on CPU).

Devices: CPU; CUDA with mixed precision (``torch.autocast`` fp16 + ``GradScaler``); several
processes under ``torchrun`` (``WORLD_SIZE > 1``; nccl on GPUs, gloo on CPUs), training on
exactly the global batch one process would (:mod:`letsplay.models.train_dist`).

The batches and KP lanes are in :mod:`letsplay.models.train_data`; the run folder, its
checks and the checkpoints' layout and serialisation in
:mod:`letsplay.models.train_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models import losses
from letsplay.models.config import DictConfig
from letsplay.models.discriminator import AudioVideoDiscriminator, DiscriminatorConfig, d_loss, frozen, generator_losses
from letsplay.models.discriminator import mismatched as mismatched_audio
from letsplay.models.keypoints import KeypointState
from letsplay.models.performer import Performer, PerformerConfig, PerformerState
from letsplay.models.train_checkpoint import (
    _flatten_optim,
    _unflatten_optim,
    check_out_folder,
    clear_run,
    is_run_folder,
    latest_checkpoint,
    module_tensors,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from letsplay.models.train_data import Batches, Lanes, data_roots, training_mean_pose
from letsplay.models.train_dist import (
    barrier,
    broadcast_module,
    check_ranks_agree,
    gather_rows,
    init_distributed,
    mean_over_ranks,
    sync_grads,
)
from letsplay.models.warp import LABELS

log = logging.getLogger(__name__)

STAGES = ("kp", "cvg", "stu")
STAGE_CHOICES = ("onset", "pitch", "kp", "cvg", "stu", "all", "e2e")


def stu_discriminator(patch: bool = False) -> DiscriminatorConfig:
    """The STU stage's audio-video discriminator: a small one (a few per cent of a step's
    work). ``patch``: the PatchGAN form, four stride-2 layers and a logit per patch (each sees
    64 px of the frame); else five layers pooled into one logit, as in the paper."""
    return DiscriminatorConfig(base_channels=16, max_channels=128, layers=4 if patch else 5, audio_channels=32,
                               audio_layers=3, audio_features=64, hidden=64, patch=patch)


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    stage: str = "all"  # onset | pitch | kp | cvg | stu | all (kp, cvg, stu in turn) | e2e (fine-tune all together)
    steps: int = 1000  # optimizer steps in total (for "all": split by stage_fractions)
    stage_fractions: tuple[float, float, float] = (0.2, 0.3, 0.5)  # kp, cvg, stu shares of "all"
    batch: int = 4  # sequences per step (per rank)
    seq_len: int = 8  # frames per sequence (rolled out step by step, state carried)
    lr: float = 1e-3  # Adam start learning rate (paper IV-A)
    lr_final: float = 1.25e-4  # learning rate at the end of each stage (paper IV-A)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (GAN-style beta1 for all stages)
    l1_weight: float = 10.0  # STU pixel L1 weight
    perc_weight: float = 2.0  # STU perceptual (Eq. 7) weight
    adv_weight: float = 0.05  # STU adversarial (Eq. 5) weight
    fm_weight: float = 0.0  # STU feature matching against the discriminator's frame features (needs adv_weight > 0)
    kp_weight: float = 1.0  # e2e: KHP loss weight
    coarse_weight: float = 1.0  # e2e: CVG loss weight
    perc_size: int = 128  # perceptual loss at most this frame side (frames are area-downsampled)
    perc_width_div: int = 4  # VGG-19 width divisor of the perceptual loss (1 = full VGG-19)
    vgg_weights: str | None = None  # local ImageNet VGG-19 weights for the perceptual loss (else random)
    disc: DiscriminatorConfig = field(default_factory=stu_discriminator)
    grad_clip: float = 5.0  # gradient norm clip per optimizer (0 = off)
    seed: int = 0  # init, data order, noise
    ckpt_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoint folders kept
    log_every: int = 10  # steps between metric log lines
    workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    max_clips: int | None = None  # use at most this many training clips (smoke runs)
    kp_lanes: bool = True  # kp stage: clips read start to end, LSTM state carried between chunks (TBPTT)
    stu_lanes: bool = False  # stu stage: clips read start to end, every state (KHP, CVG, STU) carried between chunks
    thin_weight: float = 0.0  # stu / e2e: L1 weight 1 + this on thin parts' pixels (bow, slide, hands; part maps)
    teacher_keypoints: float = 0.0  # stu stage: share of sequences whose heatmaps come from the real keypoints
    teacher_onsets: float = 0.5  # kp stage, motion heads: share of clips whose direction state the real onsets drive
    teacher_motion: float = 0.0  # kp stage, motion heads: share of sequences whose readout reads the real motion
    minutes: float = 0.0  # wall-clock budget (0: none): after a probe, as many steps (<= steps) as end in time
    onset_shift: int = 6  # onset and pitch stages: windows shifted by up to this many CQT bins (semitones) up or down
    freeze_onset: bool = False  # kp stage: the KHP's onset detector (trained by the onset stage) stays as it is
    timbre: float = 0.0  # onset, pitch, kp stages: strength of a random instrument-body EQ on the CQT (0: none)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_CHOICES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {list(STAGE_CHOICES)}")
        for name in ("steps", "batch", "seq_len", "ckpt_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if min(self.stage_fractions) < 0 or sum(self.stage_fractions) <= 0:
            raise ValueError(f"stage_fractions are shares of the steps: >= 0 and not all 0, got "
                             f"{list(self.stage_fractions)}")
        if not (self.lr > 0 and self.lr_final > 0):
            raise ValueError(f"lr and lr_final must be > 0, got {self.lr} and {self.lr_final}")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 (or None: all clips), got {self.max_clips}")
        if not 0.0 <= self.teacher_onsets <= 1.0:
            raise ValueError(f"teacher_onsets is a share of the clips, 0..1; got {self.teacher_onsets}")
        if not 0.0 <= self.teacher_motion <= 1.0:
            raise ValueError(f"teacher_motion is a share of the sequences, 0..1; got {self.teacher_motion}")
        if not 0.0 <= self.teacher_keypoints <= 1.0:
            raise ValueError(f"teacher_keypoints is a share of the sequences, 0..1; got {self.teacher_keypoints}")
        if not (math.isfinite(self.thin_weight) and self.thin_weight >= 0):
            raise ValueError(f"thin_weight is an extra L1 weight, >= 0; got {self.thin_weight}")
        if not (math.isfinite(self.fm_weight) and self.fm_weight >= 0):
            raise ValueError(f"fm_weight is a loss weight, >= 0; got {self.fm_weight}")
        if self.fm_weight > 0 and self.adv_weight <= 0:
            raise ValueError("feature matching (fm_weight > 0) reads the discriminator's features, which only an "
                             "adversarial term trains: give adv_weight > 0 as well")
        if not (math.isfinite(self.timbre) and 0.0 <= self.timbre <= 2.0):
            raise ValueError(f"timbre is the strength of the random EQ, 0..2 (0: none); got {self.timbre}")
        if self.onset_shift < 0:
            raise ValueError(f"onset_shift is a number of CQT bins, >= 0; got {self.onset_shift}")
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise ValueError(f"minutes is a wall-clock budget, >= 0 (0: none); got {self.minutes}")


# The part-map labels (models/warp.LABELS) whose pixels ``thin_weight`` weights: drawn a few
# pixels wide, they are background at most pixels most of the time under a plain L1.
THIN_PART_IDS: tuple[int, ...] = tuple(LABELS[n] for n in ("bow", "slide", "right_hand", "left_hand"))


def _per_lane(prev: Tensor | None, draw: Tensor, reset: Tensor) -> Tensor:
    """A lane's draw (teacher or not) for this chunk: a fresh one where the lane starts a
    clip (or there is none yet), its previous one elsewhere -- one history per clip."""
    return draw if prev is None or len(prev) != len(draw) else torch.where(reset, draw, prev)


# --------------------------------------------------------------------------- schedule


def schedule(cfg: TrainConfig) -> list[tuple[str, int, int]]:
    """The stages to run as ``(stage, first step, end step)`` over ``cfg.steps``."""
    if cfg.stage != "all":
        return [(cfg.stage, 0, cfg.steps)]
    fr = np.asarray(cfg.stage_fractions, dtype=np.float64)
    bounds = np.round(np.cumsum(fr / fr.sum()) * cfg.steps).astype(int)
    out, start = [], 0
    for name, end in zip(STAGES, bounds, strict=True):
        if end > start:
            out.append((name, start, int(end)))
        start = int(end)
    return out


def lr_at(cfg: TrainConfig, step: int, start: int, end: int) -> float:
    """Exponential decay from ``cfg.lr`` to ``cfg.lr_final`` over the stage ``[start, end)``."""
    span = max(1, end - start - 1)
    p = min(1.0, max(0.0, (step - start) / span))
    return cfg.lr * (cfg.lr_final / cfg.lr) ** p


# --------------------------------------------------------------------------- the trainer


@dataclass
class TrainResult:
    step: int  # steps done
    wall_s: float  # seconds of this run (not counting an earlier interrupted one)
    steps_per_s: float  # this run's rate
    history: list[dict[str, float]]  # per-step losses of this run: {"step": .., "<loss>": ..}
    performer_path: Path  # OUT/performer.safetensors


class Trainer:
    """Trains a Performer on a dataset folder; see the module docstring."""

    def __init__(self, model_cfg: PerformerConfig, cfg: TrainConfig, data: str | Path | Sequence[str | Path],
                 out: str | Path, device: str | None = None, init_from: str | Path | None = None,
                 progress: bool = True) -> None:
        from letsplay.models.data.torch_dataset import PerformanceDataset, open_sources

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist, self.device = init_distributed(device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        loaded = None
        if init_from is not None:
            loaded = Performer.load(init_from)
            if loaded.cfg.instrument != model_cfg.instrument:
                raise ValueError(f"--init checkpoint is for {loaded.cfg.instrument}, not {model_cfg.instrument}")
            # the data is read as the checkpoint's model hears it: its audio spec and lookahead
            model_cfg = loaded.cfg
        roots = data_roots(data)
        clips = []
        for root in roots:  # several datasets: their training clips together, in the order given
            found = [c for c in open_sources(root, split="train") if c.instrument == model_cfg.instrument]
            if not found:
                raise ValueError(f"{root}: no training clips of instrument {model_cfg.instrument!r}; make a dataset "
                                 f"with 'letsplay data synth --instrument {model_cfg.instrument}'")
            clips += found
        if cfg.max_clips:
            clips = clips[: cfg.max_clips]
        # the features' cache keys name each clip's audio file, so one folder serves every dataset
        self.dataset = PerformanceDataset(clips, cfg.seq_len, model_cfg.audio, model_cfg.video,
                                          cache_dir=roots[0] / ".cache", seed=cfg.seed, random_offset=True)
        if loaded is not None:
            self.model = loaded
        else:
            self.model = Performer(model_cfg)
            pose = training_mean_pose(clips) if self.model.khp is not None else None
            if pose is not None:
                self.model.khp.set_mean_pose(pose)
        if self.model.warp is not None and not self.model.warp.has_reference:
            # what the performer looks like: its first training clip (a checkpoint's own reference is kept)
            from letsplay.models.warp import reference_from_clip

            video = self.model.cfg.video
            ref = reference_from_clip(clips[0], (video.height, video.width))
            self.model.set_reference(ref)
            log.info("the warp's reference: %s", ref.source)
        self.model.to(self.device)
        self.disc = AudioVideoDiscriminator(cfg.disc, self.model.cfg.audio).to(self.device)
        broadcast_module(self.model, self.dist)  # equal by construction (same seed); made certain
        broadcast_module(self.disc, self.dist)
        self.perc = losses.PerceptualLoss(cfg.vgg_weights, width_div=cfg.perc_width_div).to(self.device)
        self.perc.requires_grad_(False)
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.plan = schedule(cfg)
        # the KHP's stages learn from audio alone
        self.dataset.with_frames = any(stage not in ("kp", "onset", "pitch") for stage, _, _ in self.plan)
        self.dataset.with_motion = self.model.khp is not None and self.model.khp.cfg.motion_heads
        if self.model.khp is not None:  # the pitch detector's targets lead the display time by the config's lead
            self.dataset.pitch_lead_ms = self.model.khp.cfg.fingering_lead_ms
        self.dataset.with_parts = cfg.thin_weight > 0 and any(st in ("stu", "e2e") for st, _, _ in self.plan)
        onset = None if self.model.khp is None else self.model.khp.onset
        if any(stage == "onset" for stage, _, _ in self.plan) and onset is None:
            raise ValueError("--stage onset trains the KHP's onset detector, and this model has none "
                             "(KeypointConfig.onset_detector = 0); use the realtime preset")
        if any(stage == "pitch" for stage, _, _ in self.plan) and (self.model.khp is None
                                                                   or self.model.khp.pitch is None):
            raise ValueError("--stage pitch trains the KHP's pitch detector, and this model has none "
                             "(KeypointConfig.pitch_detector = 0); the realtime preset has one")
        if cfg.freeze_onset:
            if onset is None:
                raise ValueError("--freeze-onset keeps the KHP's onset detector as it is, and this model has none")
            onset.requires_grad_(False)
        self.opts = self._make_optimizers()
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.batches = Batches(self.dataset, cfg.batch, cfg.seed, self.dist, cfg.workers)
        use_lanes = ((cfg.kp_lanes and self.model.khp is not None and any(st == "kp" for st, _, _ in self.plan))
                     or (cfg.stu_lanes and any(st == "stu" for st, _, _ in self.plan)))
        self.lanes = Lanes(self.dataset, cfg.batch, cfg.seq_len, cfg.seed, self.dist) if use_lanes else None
        self.kp_state: Any = None  # KHP state carried between the lanes' chunks
        self._teacher: Tensor | None = None  # lanes whose direction state the real onsets drive
        self.stu_state: PerformerState | None = None  # stu lanes: the whole performer's state per lane
        self._stu_teach: Tensor | None = None  # stu lanes: lanes drawn from the real keypoints (per clip)
        self._timbre_curve: Tensor | None = None  # kp lanes: each lane's timbre curve [B, bins] (per clip)
        self._writer: Any = None
        self._budget_decided = False  # cfg.minutes: the step count has been set from the measured rate

    # ---- optimizers: one per trained part, so a stage's Adam moments are its own
    def _gen_params(self, stage: str) -> list[nn.Parameter]:
        m = self.model
        if stage == "e2e":
            return [p for p in m.parameters()]
        if stage == "onset":
            return [] if m.khp is None or m.khp.onset is None else list(m.khp.onset.parameters())
        if stage == "pitch":
            return [] if m.khp is None or m.khp.pitch is None else list(m.khp.pitch.parameters())
        mod = {"kp": m.khp, "cvg": m.cvg, "stu": m.stu}[stage]
        if mod is None:
            return []
        # the pitch detector is trained by its own stage alone (the fingering it drives has no gradient)
        own = set() if stage != "kp" or m.khp.pitch is None else {id(p) for p in m.khp.pitch.parameters()}
        return [p for p in mod.parameters() if p.requires_grad and id(p) not in own]

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {}
        for stage, _, _ in self.plan:
            params = self._gen_params(stage)
            if not params:
                continue
            opts[stage] = torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas)
            if stage in ("stu", "e2e") and "disc" not in opts:
                opts["disc"] = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)
        return opts

    # ---- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank must call it: under ``torchrun`` the ranks
        first check that their weights agree and gather the lanes' KHP states)."""
        check_ranks_agree(self.model, self.dist, self.step)
        kp_state = None if self.kp_state is None else {
            k: gather_rows(v, self.dist) for k, v in self.kp_state.to_dict().items()}
        teacher = None if self._teacher is None else gather_rows(self._teacher.float().to(self.device), self.dist)
        curve = None if self._timbre_curve is None else gather_rows(self._timbre_curve.float(), self.dist)
        stu_state = None if self.stu_state is None else {
            k: gather_rows(v, self.dist) for k, v in self.stu_state.to_dict().items()}
        stu_teach = None if self._stu_teach is None else gather_rows(self._stu_teach.float().to(self.device),
                                                                     self.dist)
        if not self.dist.main:
            return None
        tensors = module_tensors("disc", self.disc)
        if stu_state is not None:
            tensors.update({f"stulanes.{k}": v.detach().to("cpu").contiguous().clone() for k, v in stu_state.items()})
        if stu_teach is not None:
            tensors["stulanes_teacher"] = stu_teach.to("cpu").contiguous().clone()
        if kp_state is not None:  # the global batch's lanes, in lane order
            tensors.update({f"lanes.{k}": v.detach().to("cpu").contiguous().clone() for k, v in kp_state.items()})
        if teacher is not None:
            tensors["lanes_teacher"] = teacher.to("cpu").contiguous().clone()
        if curve is not None:
            tensors["lanes_timbre"] = curve.to("cpu").contiguous().clone()
        meta = {
            "step": self.step, "train_config": self.cfg.to_dict(), "schedule": self.plan,
            "model_config": self.model.cfg.to_dict(),
            "optimizers": {name: _flatten_optim(name, o, tensors) for name, o in self.opts.items()},
            "data": {"epoch": self.batches.epoch, "position": self.batches.position,
                     "per_epoch": self.batches.per_epoch, "world": self.dist.world,
                     "lanes": None if self.lanes is None else self.lanes.state()},
            "scaler": self.scaler.state_dict() if self.use_amp else None,
        }
        return write_checkpoint(self.out, self.step, self.model, tensors, meta, self.noise, self.cfg.keep_checkpoints)

    def load_checkpoint(self, folder: Path) -> None:
        meta, tensors, pf = read_checkpoint(folder)
        if self.cfg.minutes > 0:  # a time-budgeted run decided its own step count: keep it
            saved = int(meta["train_config"]["steps"])
            if saved <= self.cfg.steps:
                self.cfg = dataclasses.replace(self.cfg, steps=saved)
                self.plan = schedule(self.cfg)
                self._budget_decided = True
        if TrainConfig.from_dict(meta["train_config"]) != self.cfg:
            old = TrainConfig.from_dict(meta["train_config"])
            diff = [f.name for f in dataclasses.fields(self.cfg) if getattr(old, f.name) != getattr(self.cfg, f.name)]
            raise ValueError(f"--resume with other training settings than the checkpoint's ({', '.join(diff)}); "
                             f"use the same options, or a new --out")
        if meta["data"]["world"] != self.dist.world:
            raise ValueError(f"checkpoint was written by {meta['data']['world']} processes, now {self.dist.world}; "
                             f"exact resume needs the same number")
        model = Performer.load(pf, device=self.device)
        if model.cfg != self.model.cfg:
            raise ValueError(f"{pf}: the checkpoint's model config differs from the requested preset/instrument")
        self.model.load_state_dict(model.state_dict())
        self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        for name, o in self.opts.items():
            _unflatten_optim(name, o, meta["optimizers"][name], tensors, self.device)
        restore_rng(meta, tensors, self.noise)
        if meta.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.batches = Batches(self.dataset, self.cfg.batch, self.cfg.seed, self.dist, self.cfg.workers,
                               epoch=meta["data"]["epoch"], position=meta["data"]["position"])
        if self.lanes is not None and meta["data"].get("lanes") is not None:
            self.lanes = Lanes(self.dataset, self.cfg.batch, self.cfg.seq_len, self.cfg.seed, self.dist,
                               state=meta["data"]["lanes"])
            lane_t = {k[6:]: v[self.dist.rank::self.dist.world].to(self.device)  # this rank's lanes
                      for k, v in tensors.items() if k.startswith("lanes.")}
            self.kp_state = KeypointState.from_dict(lane_t) if lane_t else None
            if "lanes_teacher" in tensors:
                self._teacher = tensors["lanes_teacher"][self.dist.rank::self.dist.world] > 0.5
            if "lanes_timbre" in tensors:
                self._timbre_curve = tensors["lanes_timbre"][self.dist.rank::self.dist.world].to(self.device)
            stu_t = {k[9:]: v[self.dist.rank::self.dist.world].to(self.device)
                     for k, v in tensors.items() if k.startswith("stulanes.")}
            self.stu_state = PerformerState.from_dict(stu_t) if stu_t else None
            if "stulanes_teacher" in tensors:
                self._stu_teach = (tensors["stulanes_teacher"][self.dist.rank::self.dist.world] > 0.5).to(self.device)
        log.info("resumed from %s (step %d)", folder, self.step)

    # ---- one step of each stage
    def _z(self, B: int, T: int) -> Tensor | None:
        """CVG noise for this rank's ``B`` sequences: drawn for the global batch (``B * world``),
        this rank's rows as the sampler shards, so every sequence gets the noise it gets in
        one process and the generator stays the same on every rank."""
        if self.model.cvg is None:
            return None
        z = torch.randn(B * self.dist.world, T, self.model.cfg.cvg.z_dim, generator=self.noise)
        return z[self.dist.rank::self.dist.world].to(self.device)

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp)

    def _update(self, name: str, loss: Tensor, params: list[nn.Parameter]) -> None:
        opt = self.opts[name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        sync_grads(params, self.dist)
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(opt)

    def _stu_teacher_forward(self, batch: dict[str, Any], windows: Tensor, z: Tensor | None,
                             state: PerformerState | None = None) -> tuple[Tensor, PerformerState]:
        """The STU stage's frames with KHP and CVG frozen, where a ``teacher_keypoints``
        share of the sequences (drawn from the noise generator) gets heatmaps and GCN
        points from the real keypoints instead of KHP's. The STU then learns to draw
        exactly the pose it is given -- a sharp performer wherever KHP puts it -- rather
        than a blur over the poses KHP cannot tell apart. The rest equals Performer.forward.
        With lanes (``state`` given) a lane keeps its draw for a whole clip."""
        m = self.model
        B = windows.shape[0]
        if state is None:
            state = m.init_state(B, self.device)
        with torch.no_grad():
            kp, khp_state = m.khp(windows, state.khp, with_heatmap=False)
            kp = kp.keypoints  # [B, T, 67, 2]
            coarse, cvg_state = None, None
            if m.cvg is not None:
                c, cvg_state = m.cvg(windows, state.cvg, z)  # [B, T, 3, h, w]
                coarse = c if c.shape[-2:] == m.cfg.work_size else F.interpolate(
                    c.flatten(0, 1), size=m.cfg.work_size, mode="bilinear", align_corners=False
                ).unflatten(0, c.shape[:2])
            teach = self._draw(B, self.cfg.teacher_keypoints).to(self.device)
            if "reset" in batch:  # lanes: a lane's draw holds until it starts a new clip
                teach = self._stu_teach = _per_lane(self._stu_teach, teach, batch["reset"].to(self.device))
            kp = torch.where(teach[:, None, None, None], batch["keypoints"].to(self.device), kp)
            a = m.khp.cfg.heatmap_alpha  # real points the data lacks (confidence 0) are not drawn
            alpha = torch.where(teach[:, None, None], batch["confidence"].to(self.device) * a, torch.full_like(
                batch["confidence"], a, device=self.device))
            hm = m.khp.heatmap(kp, alpha)  # [B, T, C, h, w]
            if m.warp is not None:  # the reference warped to the pose the STU is given
                coarse = m.coarse_of(kp.flatten(0, 1)).unflatten(0, kp.shape[:2])
        fake, stu_state = m.stu(coarse, hm, kp if m.stu.has_keypoints else None, windows, state.stu)
        return fake.float(), PerformerState(khp=khp_state, cvg=cvg_state, stu=stu_state)

    def _stu_losses(self, fake: Tensor, real: Tensor, windows: Tensor, parts: Tensor | None = None
                    ) -> dict[str, Tensor]:
        cfg = self.cfg
        if parts is not None and cfg.thin_weight > 0:  # thin parts count more (unknown labels: weight 1)
            thin = torch.isin(parts.to(self.device), torch.tensor(THIN_PART_IDS, device=self.device))
            out: dict[str, Tensor] = {"l1": losses.weighted_frame_l1(fake, real, 1.0 + cfg.thin_weight * thin)}
        else:
            out = {"l1": losses.frame_l1(fake, real)}
        fr, rr = fake.flatten(0, 1), real.flatten(0, 1)
        if fr.shape[-1] > cfg.perc_size:
            fr = F.interpolate(fr, size=(cfg.perc_size, cfg.perc_size), mode="area")
            rr = F.interpolate(rr, size=(cfg.perc_size, cfg.perc_size), mode="area")
        out["perc"] = self.perc(fr, rr) if cfg.perc_weight > 0 else fake.new_zeros(())
        if cfg.adv_weight > 0:  # with feature matching (fm_weight > 0) from the same pass of D
            with frozen(self.disc):
                out.update(generator_losses(self.disc, fake.flatten(0, 1), windows.flatten(0, 1),
                                            real.flatten(0, 1) if cfg.fm_weight > 0 else None))
        else:  # no adversarial term: the discriminator is neither run nor trained
            out["adv"] = fake.new_zeros(())
        out["g"] = cfg.l1_weight * out["l1"] + cfg.perc_weight * out["perc"] + cfg.adv_weight * out["adv"]
        if "fm" in out:
            out["g"] = out["g"] + cfg.fm_weight * out["fm"]
        return out

    def _d_step(self, fake: Tensor, real: Tensor, windows: Tensor) -> dict[str, Tensor]:
        w = windows.flatten(0, 1)
        wrong = mismatched_audio(windows)
        with self._autocast():
            dl = d_loss(self.disc, real.flatten(0, 1), fake.detach().flatten(0, 1), w,
                        None if wrong is None else wrong.flatten(0, 1))
        self._update("disc", dl["d"], list(self.disc.parameters()))
        return {"d": dl["d"]}

    def train_step(self, stage: str, batch: dict[str, Any]) -> dict[str, float]:
        m = self.model
        windows = batch["cqt"].to(self.device)  # [B, T, F, W]
        B, T = windows.shape[:2]
        logs: dict[str, Tensor] = {}
        if stage == "onset":
            if "motion" not in batch:
                raise ValueError("the onset stage needs the clips' notes (motion targets); this dataset has none")
            from letsplay.models.keypoints import ONSET_POS_WEIGHT

            windows = self._timbre(self._shift_pitch(windows))
            with self._autocast():
                logits = m.khp.onset_logits(windows).float()
            real = batch["motion"][..., 0].to(self.device)
            mask = batch["motion_mask"][..., 0].to(self.device)
            bce = F.binary_cross_entropy_with_logits(logits, real, reduction="none",
                                                     pos_weight=logits.new_tensor(ONSET_POS_WEIGHT))
            loss = (bce * mask).sum() / mask.sum().clamp_min(1.0)
            self._update("onset", loss, self._gen_params("onset"))
            logs = {"onset": loss}
        elif stage == "pitch":
            if "pitch" not in batch:
                raise ValueError("the pitch stage needs the clips' notes (pitch targets); this dataset has none")
            target = batch["pitch"].to(self.device)
            # a shift of whole semitones needs 12 bins an octave; other CQTs get the gain alone
            semitone = m.cfg.audio.bins_per_octave == 12
            windows, shift = self._shift_pitch(windows, with_shift=True, most=None if semitone else 0)
            target = target + shift.to(self.device)[:, None]  # the same semitones up or down
            windows = self._timbre(windows)
            n = m.khp.pitch.out.out_features
            target = torch.where((batch["pitch"].to(self.device) >= 0) & (target >= 0) & (target < n), target, -1)
            if not bool((target >= 0).any()):
                logs = {"pitch": windows.new_zeros(())}
            else:
                with self._autocast():
                    logits = m.khp.pitch_logits(windows).float()
                loss = F.cross_entropy(logits.reshape(-1, n), target.reshape(-1), ignore_index=-1)
                self._update("pitch", loss, self._gen_params("pitch"))
                logs = {"pitch": loss}
        elif stage == "kp":
            kp_real, conf = batch["keypoints"].to(self.device), batch["confidence"].to(self.device)
            windows = self._timbre(windows, batch.get("reset"))
            state = None
            if "reset" in batch and self.kp_state is not None:  # lanes: go on from the lane's last chunk
                state = m.khp.reset_where(self.kp_state, batch["reset"].to(self.device))
            teacher = None
            if m.khp.cfg.motion_heads and "motion" in batch and self.cfg.teacher_onsets > 0:
                # lanes keep their teacher for a whole clip (a clip's direction state is one history)
                forced = self._teacher_lanes(batch).to(self.device)
                real_on = batch["motion"][..., 0].to(self.device)
                real_on = torch.where(batch["motion_mask"][..., 0].to(self.device) > 0, real_on, float("nan"))
                teacher = torch.where(forced[:, None], real_on, torch.full_like(real_on, float("nan")))
            motion_teacher = None
            if m.khp.cfg.motion_heads and "motion" in batch and self.cfg.teacher_motion > 0:
                motion_teacher = self._motion_teacher(batch)
            with self._autocast():
                out, st = m.khp(windows, state, with_heatmap=False, teacher=teacher,  # the loss makes its heatmaps
                                motion_teacher=motion_teacher)
                motion = {}
                if out.motion is not None and "motion" in batch:
                    motion = {"motion": out.motion.float(), "motion_real": batch["motion"].to(self.device),
                              "motion_mask": batch["motion_mask"].to(self.device)}
                lk = m.khp.loss(out.keypoints.float(), kp_real, conf, **motion)
            self._update("kp", lk["kp"], self._gen_params("kp"))
            if "reset" in batch:
                self.kp_state = st.map(lambda t: t.detach().float())
            logs = lk
        elif stage == "cvg":
            real = batch["frames"].to(self.device)
            z = self._z(B, T)
            with self._autocast():
                coarse, _ = m.cvg(windows, None, z)  # rolled out: its own frames fed back
                lc = losses.frame_l1(coarse.float(), real)
            self._update("cvg", lc, self._gen_params("cvg"))
            logs = {"coarse": lc}
        else:  # stu / e2e
            real = batch["frames"].to(self.device)
            z = self._z(B, T)
            e2e = stage == "e2e"
            lanes = stage == "stu" and "reset" in batch
            state = self._stu_lane_state(batch["reset"].to(self.device), B) if lanes else None
            saved = m.cfg
            if e2e:
                m.cfg = dataclasses.replace(m.cfg, end_to_end=True)
            try:
                with self._autocast():
                    if not e2e and self.cfg.teacher_keypoints > 0 and m.khp is not None:
                        fake, new_state = self._stu_teacher_forward(batch, windows, z, state)
                    else:
                        out, new_state = m(windows, state, z)
                        fake = out.frame.float()
            finally:
                m.cfg = saved
            if self.cfg.adv_weight > 0:
                logs.update(self._d_step(fake, real, windows))
            with self._autocast():
                lg = self._stu_losses(fake, real, windows, batch.get("parts"))
                total = lg["g"]
                if e2e:
                    if m.khp is not None:
                        lk = m.khp.loss(out.keypoints.float(), batch["keypoints"].to(self.device),
                                        batch["confidence"].to(self.device))
                        total = total + self.cfg.kp_weight * lk["kp"]
                        lg["kp"] = lk["kp"]
                    if m.cvg is not None:
                        lg["coarse"] = losses.frame_l1(out.coarse.float(), real)
                        total = total + self.cfg.coarse_weight * lg["coarse"]
            self._update(stage, total, self._gen_params(stage))
            if lanes:  # carried to the lane's next chunk, without its graph (truncated BPTT)
                self.stu_state = new_state.map(lambda t: t.detach().float())
            logs.update(lg)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in logs.items()}

    def _stu_lane_state(self, reset: Tensor, B: int) -> PerformerState:
        """The performer state each STU lane goes on from: its last chunk's, or the initial
        state where the lane starts a clip (and for every lane at the stage's first step)."""
        init = self.model.init_state(B, self.device)
        return init if self.stu_state is None else self.stu_state.where(reset, init)

    # ---- the loop
    def _decide_steps(self, elapsed: float, rate: float, budget: float, stop_at: int | None) -> int:
        """A time-budgeted run (``cfg.minutes``) sets its step count from the rate measured
        over the probe steps (the mean over ranks, so every rank decides alike): as many as
        end within the budget, at most ``cfg.steps``. The learning-rate schedule spans the
        new count; the checkpoints record it, so ``--resume`` keeps it."""
        rate = mean_over_ranks({"rate": rate}, self.dist, self.device)["rate"]
        total = int(min(self.cfg.steps, self.step + max(0.0, budget - elapsed) * rate * 0.97))
        total = max(total, self.step + 1)
        log.info("time budget %.1f min: %.2f steps/s measured, training %d steps (asked for at most %d)",
                 self.cfg.minutes, rate, total, self.cfg.steps)
        self.cfg = dataclasses.replace(self.cfg, steps=total)
        self.plan = schedule(self.cfg)
        self._budget_decided = True
        if self.dist.main:
            (self.out / "train_config.json").write_text(json.dumps(
                {"train": self.cfg.to_dict(), "model": self.model.cfg.to_dict(), "schedule": self.plan}, indent=1))
        return total if stop_at is None else min(total, stop_at)

    def _draw(self, B: int, share: float) -> Tensor:
        """[B] bool, true for about ``share`` of this rank's sequences: drawn for the global
        batch and this rank's rows taken, the same as one process would draw."""
        d = self.dist
        return (torch.rand(B * d.world, generator=self.noise) < share)[d.rank::d.world]

    def _shift_pitch(self, windows: Tensor, with_shift: bool = False, most: int | None = None) -> Any:
        """The onset and pitch stages' augmentation: each sequence's CQT windows ``[B, T, bins, W]``
        shifted by a random whole number of bins (up to ``onset_shift``: semitones at 12 bins
        an octave; the bins shifted in are silent) and scaled by a random gain (x 0.5 .. 2),
        drawn for the global batch like every draw. ``with_shift``: also the shifts ``[B]``
        (bins up), to move the pitch targets with them; ``most``: another largest shift."""
        B, n = windows.shape[0], self.cfg.onset_shift if most is None else most
        d = self.dist
        shift = torch.randint(-n, n + 1, (B * d.world,), generator=self.noise)[d.rank::d.world]
        gain = torch.exp(torch.empty(B * d.world).uniform_(-0.7, 0.7, generator=self.noise))[d.rank::d.world]
        out = torch.zeros_like(windows)
        bins = windows.shape[2]
        for b in range(B):
            k = int(shift[b])
            if k >= 0:
                out[b, :, k:] = windows[b, :, : bins - k]
            else:
                out[b, :, :k] = windows[b, :, -k:]
        out = out * gain.to(windows.device)[:, None, None, None]
        return (out, shift) if with_shift else out

    def _timbre(self, windows: Tensor, reset: Tensor | None = None) -> Tensor:
        """The timbre augmentation (``cfg.timbre`` = s > 0): each sequence's CQT windows
        ``[B, T, bins, W]`` multiplied, bin by bin, by ``exp(eq + tilt + gain)`` -- a smooth
        random EQ (8 knots spread over the bins, each N(0, s), linear between them), a
        spectral tilt (uniform +-2s from the lowest bin to the highest) and a gain (uniform
        +-1.4s): another instrument body, another microphone, another soundfont. One
        curve per sequence, constant over its frames; with lanes (``reset`` given) one per
        clip, drawn again when a lane starts a clip. Off (s = 0) it draws nothing, so runs
        without it keep their random streams."""
        s = self.cfg.timbre
        if s <= 0:
            return windows
        B, bins = windows.shape[0], windows.shape[2]
        d, n = self.dist, B * self.dist.world
        knots = torch.randn(n, 8, generator=self.noise) * s
        tilt = torch.empty(n, 1).uniform_(-2 * s, 2 * s, generator=self.noise)
        gain = torch.empty(n, 1).uniform_(-1.4 * s, 1.4 * s, generator=self.noise)
        eq = F.interpolate(knots[:, None], size=bins, mode="linear", align_corners=True)[:, 0]
        ramp = torch.linspace(-0.5, 0.5, bins)[None]
        curve = (eq + tilt * ramp + gain)[d.rank::d.world].to(windows.device)
        if reset is not None:
            curve = _per_lane(self._timbre_curve, curve, reset.to(windows.device)[:, None])
            self._timbre_curve = curve
        return windows * torch.exp(curve).to(windows.dtype)[:, None, :, None]

    def _motion_teacher(self, batch: dict[str, Any]) -> Tensor:
        """[B, T, 6]: the real motion states the keypoint readout reads (``teacher_motion``
        of the sequences, drawn per chunk; the decoded channels the data has), NaN elsewhere."""
        from letsplay.models.keypoints import DECODED

        real = batch["motion"].to(self.device)
        given = batch["motion_mask"].to(self.device) > 0
        take = self._draw(real.shape[0], self.cfg.teacher_motion)
        chan = torch.zeros(real.shape[-1], dtype=torch.bool, device=self.device)
        chan[list(DECODED)] = True
        use = given & chan & take.to(self.device)[:, None, None]
        return torch.where(use, real, torch.full_like(real, float("nan")))

    def _teacher_lanes(self, batch: dict[str, Any]) -> Tensor:
        """[B] bool: which sequences' direction states the real onsets drive (``teacher_onsets``
        of them, drawn again when a lane starts a clip; fresh draws without lanes)."""
        draw = self._draw(len(batch["motion"]), self.cfg.teacher_onsets)
        if "reset" not in batch:
            return draw
        self._teacher = _per_lane(self._teacher, draw, batch["reset"])
        return self._teacher

    def _stage_at(self, step: int) -> tuple[str, int, int]:
        for s in self.plan:
            if s[1] <= step < s[2]:
                return s
        return self.plan[-1]

    def _log(self, rec: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._writer is not None:
            for k, v in rec.items():
                if isinstance(v, float):
                    self._writer.add_scalar(f"{rec['stage']}/{k}", v, rec["step"])

    def _open_logs(self) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.jsonl"
        if path.is_file():  # drop lines past the checkpoint we resume from
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            path.write_text("".join(ln + "\n" for ln in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step)
        except Exception:  # noqa: BLE001 - tensorboard not installed: JSONL only
            self._writer = None

    def run(self, resume: bool = False, stop_at: int | None = None, overwrite: bool = False) -> TrainResult:
        """Train up to ``cfg.steps`` (or stop, with a checkpoint, at step ``stop_at``: a time
        budget or a simulated interruption; ``resume`` later continues exactly).

        The out folder is checked first (:func:`check_out_folder`): a folder holding a run
        needs ``resume`` (same settings) or ``overwrite`` (its run's files are deleted)."""
        check_out_folder(self.out, self.cfg, self.model.cfg, resume=resume, overwrite=overwrite)
        barrier(self.dist)  # every rank has looked before rank 0 deletes or writes anything
        if overwrite and self.dist.main and is_run_folder(self.out):
            clear_run(self.out)
        if resume:
            ck = latest_checkpoint(self.out)
            if ck is None:
                log.warning("--resume: no checkpoint in %s, starting fresh", self.out)
            else:
                self.load_checkpoint(ck)
        barrier(self.dist)  # every rank has read the run before rank 0 rewrites its logs
        self._open_logs()
        if self.dist.main:
            (self.out / "train_config.json").write_text(json.dumps(
                {"train": self.cfg.to_dict(), "model": self.model.cfg.to_dict(), "schedule": self.plan}, indent=1))
        from tqdm import tqdm

        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.progress and self.dist.main),
                   desc="train", unit="step", dynamic_ncols=True)
        history: list[dict[str, float]] = []
        t0, first = time.perf_counter(), self.step
        self.model.train()
        budget = self.cfg.minutes * 60.0
        probe = max(8, min(40, self.cfg.steps // 20))  # steps timed before a budgeted run sets its length
        t_probe: float | None = None
        try:
            end = self.cfg.steps if stop_at is None else min(self.cfg.steps, stop_at)
            while self.step < end:
                if budget > 0:
                    elapsed = time.perf_counter() - t0
                    if self.step - first == 3:  # the first steps warm caches and kernels: not timed
                        t_probe = time.perf_counter()
                    if not self._budget_decided and self.step - first == probe and t_probe is not None:
                        end = self._decide_steps(elapsed, (probe - 3) / max(time.perf_counter() - t_probe, 1e-9),
                                                 budget, stop_at)
                        bar.total = self.cfg.steps
                    elif elapsed > budget * 1.05 + 30:  # slower than the probe said: stop with a checkpoint
                        log.warning("time budget of %.1f min spent at step %d of %d; stopping with a checkpoint "
                                    "(--resume continues)", self.cfg.minutes, self.step, self.cfg.steps)
                        self.save_checkpoint()
                        break
                stage, s0, s1 = self._stage_at(self.step)
                if stage not in self.opts:  # an ablation without this stage (w/o KHP, w/o CVG)
                    bar.update(min(s1, end) - self.step)
                    self.step = min(s1, end)
                    if self.step == end:
                        self.save_checkpoint()
                    continue
                lr = lr_at(self.cfg, self.step, s0, s1)
                for o in self.opts.values():
                    for g in o.param_groups:
                        g["lr"] = lr
                lanes = (stage == "kp" and self.cfg.kp_lanes) or (stage == "stu" and self.cfg.stu_lanes)
                data = self.lanes if (lanes and self.lanes is not None) else self.batches
                rec = mean_over_ranks(self.train_step(stage, data.next()), self.dist, self.device)
                if not all(math.isfinite(v) for v in rec.values()):
                    raise FloatingPointError(f"step {self.step} ({stage}): non-finite loss {rec}; "
                                             f"lower the learning rate or check the data")
                self.step += 1
                history.append({"step": self.step, **rec})
                bar.update(1)
                bar.set_postfix({"stage": stage, **{k: f"{v:.4f}" for k, v in rec.items()}}, refresh=False)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    self._log({"step": self.step, "stage": stage, "lr": lr, "epoch": data.epoch,
                               "time": time.time(), **rec})
                if self.step % self.cfg.ckpt_every == 0 or self.step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.close()
        barrier(self.dist)  # rank 0's last checkpoint is written when any rank returns
        wall = time.perf_counter() - t0
        return TrainResult(self.step, wall, (self.step - first) / max(wall, 1e-9), history,
                           self.out / "performer.safetensors")


def train(model_cfg: PerformerConfig, cfg: TrainConfig, data: str | Path | Sequence[str | Path], out: str | Path, *,
          resume: bool = False, overwrite: bool = False, device: str | None = None,
          init_from: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume training) a Performer; returns the run's summary. The out folder is
    checked (:func:`check_out_folder`) before the data is opened."""
    check_out_folder(out, cfg, None if init_from is not None else model_cfg, resume=resume, overwrite=overwrite)
    return Trainer(model_cfg, cfg, data, out, device=device, init_from=init_from,
                   progress=progress).run(resume, overwrite=overwrite)
