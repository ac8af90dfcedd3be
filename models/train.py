"""Stage-wise training of the Performer (paper section III and IV-A).

Stages, in the paper's order (``--stage all`` runs them one after another, splitting the
step budget by :attr:`TrainConfig.stage_fractions`):

* ``kp``  -- KHP alone: Eq. 2 (L2 on coordinates) + Eq. 3 (L1 on DLT heatmaps);
* ``cvg`` -- CVG alone: Eq. 4 (L1) on *rolled-out* sequences: every step feeds back the
  frame CVG generated itself (as in streaming), starting from grey, with noise ``z``;
* ``stu`` -- STU with KHP and CVG frozen: L1 + perceptual (Eq. 7) + adversarial (Eq. 5)
  against the audio-video discriminator, which trains with Eq. 6 (with mismatched audio);
* ``e2e`` -- optional end-to-end fine-tuning: all stages, all losses, STU gradients
  flowing back into KHP and CVG (``PerformerConfig.end_to_end``).

Adam, learning rate 1e-3 decaying exponentially to 1.25e-4 over each stage (IV-A: "from
0.001 gradually decreasing to 0.000125"); Kaiming init is done by the modules.

Checkpoints (every ``ckpt_every`` steps and at the end), written atomically: a folder
``OUT/checkpoints/step-NNNNNNN/`` is filled under a temporary name and renamed into place,
holding

* ``performer.safetensors`` -- :meth:`Performer.save` (usable by everything that loads a
  Performer), also copied (temp + rename) to ``OUT/performer.safetensors``;
* ``train_state.safetensors`` -- the optimizer state tensors flattened
  (``opt.<name>.<param index>.<key>``), the discriminator (``disc.*``), the RNG states
  (``rng.torch``, ``rng.noise``, ``rng.cuda.<i>`` byte tensors) and, as JSON metadata
  (``train_state``), the step, the TrainConfig, the stage schedule, the optimizers'
  param groups, the numpy / python RNG states, the data epoch and position, the
  GradScaler state and the SHA-256 of the performer file it belongs with.

``resume=True`` continues from the newest complete checkpoint exactly: the same batches,
noise and updates, so the loss sequence equals an uninterrupted run's (tested on CPU).

The out folder is never silently reused (:func:`check_out_folder`, before anything is
written): one that holds a run needs ``resume`` (with the run's settings; the refusal lists
each difference) or ``overwrite`` (the run's own files, :data:`RUN_FILES`, are deleted;
others stay); a non-empty folder that holds no run is refused either way.

Devices: CPU; CUDA with mixed precision (``torch.autocast`` fp16 + ``GradScaler``); several
processes under ``torchrun`` (``WORLD_SIZE > 1``; nccl on GPUs, gloo on CPUs). ``batch`` is
per rank; the ranks together train on exactly the batch one process with ``batch * world``
would: rank ``r`` gets sequences ``r, r + world, ...`` of each global batch (the
``DistributedSampler``'s shards of one seeded permutation; the KP lanes are dealt the same
way, every rank keeping the bookkeeping of all of them), the CVG noise is drawn for the
global batch and sliced alike, gradients are averaged with ``all_reduce`` before each
update (explicit, because the stages are trained one at a time through the Performer's
step), and the logged losses are the ranks' mean. Losses that are means over equal-size
per-sequence parts (the frame and heatmap L1s, the perceptual and adversarial losses)
then equal one process's up to float rounding (tested: 2 CPU ranks x 2 vs 1 x 4); the
confidence-weighted keypoint L2 does where the ranks' confidence sums are equal (all
synthetic data), and the discriminator's mismatched-audio pairs are rolled within each
rank's batch, so the ``stu`` stage's Eq. 6 term pairs other sequences than one process
does. Rank 0's weights are broadcast at the start; at each checkpoint the ranks compare
weight digests (a difference is an error) and gather the lanes' KHP states; only rank 0
writes checkpoints and logs.

The batches and KP lanes are in :mod:`letsplay.models.train_data`, the training state's
serialisation (RNG, optimizers, the newest checkpoint) in :mod:`letsplay.models.train_checkpoint`;
what other modules import from there is re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from letsplay.models import losses
from letsplay.models.config import DictConfig
from letsplay.models.discriminator import AudioVideoDiscriminator, DiscriminatorConfig, d_loss, frozen, g_adv_loss
from letsplay.models.discriminator import mismatched as mismatched_audio
from letsplay.models.keypoints import KeypointState
from letsplay.models.performer import Performer, PerformerConfig
from letsplay.models.train_checkpoint import (
    STATE_FORMAT,
    STATE_VERSION,
    _file_sha256,
    _flatten_optim,
    _rng_json,
    _set_rng_json,
    _unflatten_optim,
    latest_checkpoint,
)
from letsplay.models.train_data import Batches, Lanes, training_mean_pose

log = logging.getLogger(__name__)

STAGES = ("kp", "cvg", "stu")
STAGE_CHOICES = ("kp", "cvg", "stu", "all", "e2e")


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    stage: str = "all"  # kp | cvg | stu | all (kp, cvg, stu in turn) | e2e (fine-tune all together)
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
    kp_weight: float = 1.0  # e2e: KHP loss weight
    coarse_weight: float = 1.0  # e2e: CVG loss weight
    perc_size: int = 128  # perceptual loss at most this frame side (frames are area-downsampled)
    perc_width_div: int = 4  # VGG-19 width divisor of the perceptual loss (1 = full VGG-19)
    vgg_weights: str | None = None  # local ImageNet VGG-19 weights for the perceptual loss (else random)
    disc: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(
        base_channels=16, max_channels=128, layers=5, audio_channels=32, audio_layers=3,
        audio_features=64, hidden=64))
    grad_clip: float = 5.0  # gradient norm clip per optimizer (0 = off)
    seed: int = 0  # init, data order, noise
    ckpt_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoint folders kept
    log_every: int = 10  # steps between metric log lines
    workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    max_clips: int | None = None  # use at most this many training clips (smoke runs)
    kp_lanes: bool = True  # kp stage: clips read start to end, LSTM state carried between chunks (TBPTT)
    teacher_keypoints: float = 0.0  # stu stage: share of sequences whose heatmaps come from the real keypoints
    teacher_onsets: float = 0.5  # kp stage, motion heads: share of clips whose direction state the real onsets drive

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
        if not 0.0 <= self.teacher_keypoints <= 1.0:
            raise ValueError(f"teacher_keypoints is a share of the sequences, 0..1; got {self.teacher_keypoints}")


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


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        d = Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)
        if cuda:
            torch.cuda.set_device(local)
            return d, torch.device("cuda", local)
        return d, torch.device("cpu")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Dist(), torch.device(device)


def finish_distributed() -> None:
    """Wait for every rank, then close the process group (no-op for one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _sync_grads(params: list[nn.Parameter], d: Dist) -> None:
    """Average gradients over ranks (no-op for one process)."""
    if d.world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def _broadcast_module(module: nn.Module, d: Dist) -> None:
    """Rank 0's parameters and buffers on every rank (no-op for one process)."""
    if d.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def _mean_over_ranks(rec: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """The ranks' mean of each logged loss: the global batch's value (no-op for one process)."""
    if d.world == 1 or not rec:
        return rec
    import torch.distributed as dist

    keys = sorted(rec)
    t = torch.tensor([rec[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= d.world
    return dict(zip(keys, t.tolist(), strict=True))


def _gather_rows(t: Tensor, d: Dist) -> Tensor:
    """``[b, ...]`` rows of every rank as the global batch ``[b * world, ...]``, row
    ``k * world + rank`` from rank ``rank``'s row ``k`` (the order the samplers shard in)."""
    if d.world == 1:
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)


def _weights_digest(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_ranks_agree(module: nn.Module, d: Dist, step: int) -> None:
    """Raise if the ranks' weights differ (they must stay bit-identical: same start, same
    averaged gradients, same updates)."""
    if d.world == 1:
        return
    import torch.distributed as dist

    digests: list[Any] = [None] * d.world
    dist.all_gather_object(digests, _weights_digest(module))
    if len(set(digests)) != 1:
        raise RuntimeError(f"step {step}: the ranks' weights differ (digests {digests}); distributed training "
                           f"went out of step")


# --------------------------------------------------------------------------- the run folder

# Everything the trainer writes into its --out folder (and all that --overwrite deletes).
RUN_FILES = ("performer.safetensors", ".performer.safetensors.tmp", "metrics.jsonl", "train_config.json",
             "checkpoints", "tb")


def is_run_folder(out: str | Path) -> bool:
    """Whether ``out`` holds a letsplay training run (its ``train_config.json`` or checkpoints)."""
    out = Path(out)
    ck = out / "checkpoints"
    return (out / "train_config.json").is_file() or (ck.is_dir() and any(ck.glob("step-*")))


def _run_settings(out: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Path] | None:
    """(train config, model config, where read) of the run in ``out``: its newest checkpoint's,
    else its ``train_config.json``'s; None when it has neither."""
    try:
        ck = latest_checkpoint(out)
        if ck is not None:
            from safetensors import safe_open

            with safe_open(str(ck / "train_state.safetensors"), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["train_state"])
            return meta.get("train_config"), meta.get("model_config"), ck
        path = out / "train_config.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return d.get("train"), d.get("model"), path
    except Exception as e:  # noqa: BLE001 - a damaged run: say so in words
        raise ValueError(f"{out}: cannot read the run's settings ({e}); use --overwrite to start it over") from e
    return None


def _differences(old: Any, new: Any, name: str = "") -> list[str]:
    """``name: run X, now Y`` for each leaf that differs between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{name}.{k}" if name else str(k))
        return out
    return [] if old == new else [f"{name}: run {old!r}, now {new!r}"]


def check_out_folder(out: str | Path, cfg: TrainConfig, model_cfg: PerformerConfig | None = None, *,
                     resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an ``out`` folder the run would damage; reads only, writes nothing.

    * empty or absent: fine (``resume`` then starts a fresh run);
    * not empty and not a letsplay run (no ``train_config.json``, no checkpoints): refused,
      even with ``overwrite`` (it is someone else's folder);
    * a run: refused unless ``resume`` (its settings -- ``cfg`` and, when given, ``model_cfg``
      -- must equal the run's; the message lists each difference) or ``overwrite`` (the
      caller then deletes the run's files, :func:`clear_run`).
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it over; choose one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run_folder(out):
        raise ValueError(f"--out {out} is not empty and holds no letsplay training run (no train_config.json, "
                         f"no checkpoints/); choose a new or empty folder")
    if overwrite:
        return
    if not resume:
        raise ValueError(f"--out {out} already holds a training run; add --resume to continue it, --overwrite "
                         f"to start over (deleting its checkpoints, performer.safetensors and metrics), or "
                         f"choose a new folder")
    prev = _run_settings(out)
    if prev is None:
        return
    old_train, old_model, where = prev
    diffs = [] if old_train is None else _differences(old_train, json.loads(json.dumps(cfg.to_dict())))
    if model_cfg is not None and old_model is not None:
        diffs += _differences(old_model, json.loads(json.dumps(model_cfg.to_dict())), "model")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(f"--resume with other training settings than the run in {out} ({where.name}): {shown}. "
                         f"Use the run's options, --overwrite to start over, or a new --out")


def clear_run(out: str | Path) -> None:
    """Delete the files a training run wrote into ``out`` (:data:`RUN_FILES`); nothing else."""
    out = Path(out)
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("cleared the earlier run in %s", out)


def dataset_instruments(data: str | Path) -> list[str]:
    """The instruments of a dataset's training clips, sorted."""
    from letsplay.models.data.torch_dataset import open_sources

    return sorted({c.instrument for c in open_sources(data, split="train")})


def resolve_instrument(data: str | Path, instrument: str | None = None) -> str:
    """``instrument`` if the dataset's training clips hold it; None: the dataset's own one
    (refused, with the list, when it holds several)."""
    held = dataset_instruments(data)
    if not held:
        raise ValueError(f"{data} has no training clips (split 'train'); make a dataset with 'letsplay data synth' "
                         f"or 'letsplay data prepare'")
    if instrument is None:
        if len(held) > 1:
            raise ValueError(f"{data} holds several instruments ({', '.join(held)}); choose one with --instrument")
        return held[0]
    if instrument not in held:
        raise ValueError(f"{data} holds no training clips of {instrument!r}, only of {', '.join(held)}; "
                         f"choose --instrument {held[0]} or another dataset")
    return instrument


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

    def __init__(self, model_cfg: PerformerConfig, cfg: TrainConfig, data: str | Path, out: str | Path,
                 device: str | None = None, init_from: str | Path | None = None, progress: bool = True) -> None:
        from letsplay.models.data.torch_dataset import PerformanceDataset, open_sources

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist, self.device = init_distributed(device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        clips = [c for c in open_sources(data, split="train") if c.instrument == model_cfg.instrument]
        if not clips:
            raise ValueError(f"{data}: no training clips of instrument {model_cfg.instrument!r}; make a dataset "
                             f"with 'letsplay data synth --instrument {model_cfg.instrument}'")
        if cfg.max_clips:
            clips = clips[: cfg.max_clips]
        self.dataset = PerformanceDataset(clips, cfg.seq_len, model_cfg.audio, model_cfg.video,
                                          cache_dir=Path(data) / ".cache", seed=cfg.seed, random_offset=True)
        if init_from is not None:
            self.model = Performer.load(init_from)
            if self.model.cfg.instrument != model_cfg.instrument:
                raise ValueError(f"--init checkpoint is for {self.model.cfg.instrument}, not {model_cfg.instrument}")
        else:
            self.model = Performer(model_cfg)
            pose = training_mean_pose(clips) if self.model.khp is not None else None
            if pose is not None:
                self.model.khp.set_mean_pose(pose)
        self.model.to(self.device)
        self.disc = AudioVideoDiscriminator(cfg.disc, self.model.cfg.audio).to(self.device)
        _broadcast_module(self.model, self.dist)  # equal by construction (same seed); made certain
        _broadcast_module(self.disc, self.dist)
        self.perc = losses.PerceptualLoss(cfg.vgg_weights, width_div=cfg.perc_width_div).to(self.device)
        self.perc.requires_grad_(False)
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.plan = schedule(cfg)
        self.dataset.with_frames = any(stage != "kp" for stage, _, _ in self.plan)  # KHP learns from audio alone
        self.dataset.with_motion = self.model.khp is not None and self.model.khp.cfg.motion_heads
        self.opts = self._make_optimizers()
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.batches = Batches(self.dataset, cfg.batch, cfg.seed, self.dist, cfg.workers)
        use_lanes = cfg.kp_lanes and self.model.khp is not None and any(st == "kp" for st, _, _ in self.plan)
        self.lanes = Lanes(self.dataset, cfg.batch, cfg.seq_len, cfg.seed, self.dist) if use_lanes else None
        self.kp_state: Any = None  # KHP state carried between the lanes' chunks
        self._teacher: Tensor | None = None  # lanes whose direction state the real onsets drive
        self._writer: Any = None

    # ---- optimizers: one per trained part, so a stage's Adam moments are its own
    def _gen_params(self, stage: str) -> list[nn.Parameter]:
        m = self.model
        if stage == "e2e":
            return [p for p in m.parameters()]
        mod = {"kp": m.khp, "cvg": m.cvg, "stu": m.stu}[stage]
        return [] if mod is None else list(mod.parameters())

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
        _check_ranks_agree(self.model, self.dist, self.step)
        kp_state = None if self.kp_state is None else {
            k: _gather_rows(v, self.dist) for k, v in self.kp_state.to_dict().items()}
        teacher = None if self._teacher is None else _gather_rows(self._teacher.float().to(self.device), self.dist)
        if not self.dist.main:
            return None
        from safetensors.torch import save_file

        root = self.out / "checkpoints"
        final = root / f"step-{self.step:07d}"
        tmp = root / f"step-{self.step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save(tmp / "performer.safetensors")
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state(), "rng.noise": self.noise.get_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        for k, v in self.disc.state_dict().items():
            tensors[f"disc.{k}"] = v.detach().to("cpu").contiguous().clone()
        if kp_state is not None:  # the global batch's lanes, in lane order
            for k, v in kp_state.items():
                tensors[f"lanes.{k}"] = v.detach().to("cpu").contiguous().clone()
        if teacher is not None:
            tensors["lanes_teacher"] = teacher.to("cpu").contiguous().clone()
        opt_meta = {name: _flatten_optim(name, o, tensors) for name, o in self.opts.items()}
        meta = {
            "step": self.step, "train_config": self.cfg.to_dict(), "schedule": self.plan,
            "model_config": self.model.cfg.to_dict(), "optimizers": opt_meta, "rng": _rng_json(),
            "data": {"epoch": self.batches.epoch, "position": self.batches.position,
                     "per_epoch": self.batches.per_epoch, "world": self.dist.world,
                     "lanes": None if self.lanes is None else self.lanes.state()},
            "scaler": self.scaler.state_dict() if self.use_amp else None,
            "performer_sha256": _file_sha256(tmp / "performer.safetensors"),
        }
        save_file(tensors, str(tmp / "train_state.safetensors"),
                  metadata={"format": STATE_FORMAT, "format_version": str(STATE_VERSION),
                            "train_state": json.dumps(meta)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest = self.out / "performer.safetensors"
        part = self.out / ".performer.safetensors.tmp"
        shutil.copyfile(final / "performer.safetensors", part)
        os.replace(part, latest)
        done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint at step %d: %s", self.step, final)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        st = folder / "train_state.safetensors"
        with safe_open(str(st), framework="pt") as f:
            fmeta = f.metadata() or {}
        if fmeta.get("format") != STATE_FORMAT:
            raise ValueError(f"{st}: not a letsplay training state")
        meta = json.loads(fmeta["train_state"])
        pf = folder / "performer.safetensors"
        if _file_sha256(pf) != meta["performer_sha256"]:
            raise ValueError(f"{folder}: performer.safetensors does not belong to train_state.safetensors "
                             f"(digest differs); delete the folder to resume from the one before")
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
        tensors = load_file(str(st))
        self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        for name, o in self.opts.items():
            _unflatten_optim(name, o, meta["optimizers"][name], tensors, self.device)
        torch.set_rng_state(tensors["rng.torch"])
        self.noise.set_state(tensors["rng.noise"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
        _set_rng_json(meta["rng"])
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
        _sync_grads(params, self.dist)
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(opt)

    def _stu_teacher_forward(self, batch: dict[str, Any], windows: Tensor, z: Tensor | None) -> Tensor:
        """The STU stage's frames with KHP and CVG frozen, where a ``teacher_keypoints``
        share of the sequences (drawn from the noise generator) gets heatmaps and GCN
        points from the real keypoints instead of KHP's. The STU then learns to draw
        exactly the pose it is given -- a sharp performer wherever KHP puts it -- rather
        than a blur over the poses KHP cannot tell apart. The rest equals Performer.forward."""
        m = self.model
        B = windows.shape[0]
        with torch.no_grad():
            kp, _ = m.khp(windows, with_heatmap=False)
            kp = kp.keypoints  # [B, T, 67, 2]
            coarse = None
            if m.cvg is not None:
                c, _ = m.cvg(windows, None, z)  # [B, T, 3, h, w]
                coarse = c if c.shape[-2:] == m.cfg.work_size else F.interpolate(
                    c.flatten(0, 1), size=m.cfg.work_size, mode="bilinear", align_corners=False
                ).unflatten(0, c.shape[:2])
            share = torch.rand(B * self.dist.world, generator=self.noise)[self.dist.rank::self.dist.world]  # as _z
            teach = (share < self.cfg.teacher_keypoints).to(self.device)
            kp = torch.where(teach[:, None, None, None], batch["keypoints"].to(self.device), kp)
            a = m.khp.cfg.heatmap_alpha  # real points the data lacks (confidence 0) are not drawn
            alpha = torch.where(teach[:, None, None], batch["confidence"].to(self.device) * a, torch.full_like(
                batch["confidence"], a, device=self.device))
            hm = m.khp.heatmap(kp, alpha)  # [B, T, C, h, w]
        fake, _ = m.stu(coarse, hm, kp if m.stu.has_keypoints else None, windows)
        return fake.float()

    def _stu_losses(self, fake: Tensor, real: Tensor, windows: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        out: dict[str, Tensor] = {"l1": losses.frame_l1(fake, real)}
        fr, rr = fake.flatten(0, 1), real.flatten(0, 1)
        if fr.shape[-1] > cfg.perc_size:
            fr = F.interpolate(fr, size=(cfg.perc_size, cfg.perc_size), mode="area")
            rr = F.interpolate(rr, size=(cfg.perc_size, cfg.perc_size), mode="area")
        out["perc"] = self.perc(fr, rr) if cfg.perc_weight > 0 else fake.new_zeros(())
        with frozen(self.disc):
            out["adv"] = g_adv_loss(self.disc, fake.flatten(0, 1), windows.flatten(0, 1))
        out["g"] = cfg.l1_weight * out["l1"] + cfg.perc_weight * out["perc"] + cfg.adv_weight * out["adv"]
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
        if stage == "kp":
            kp_real, conf = batch["keypoints"].to(self.device), batch["confidence"].to(self.device)
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
            with self._autocast():
                out, st = m.khp(windows, state, with_heatmap=False, teacher=teacher)  # the loss makes its heatmaps
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
            saved = m.cfg
            if e2e:
                m.cfg = dataclasses.replace(m.cfg, end_to_end=True)
            try:
                with self._autocast():
                    if not e2e and self.cfg.teacher_keypoints > 0 and m.khp is not None:
                        fake = self._stu_teacher_forward(batch, windows, z)
                    else:
                        out, _ = m(windows, None, z)
                        fake = out.frame.float()
            finally:
                m.cfg = saved
            logs.update(self._d_step(fake, real, windows))
            with self._autocast():
                lg = self._stu_losses(fake, real, windows)
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
            logs.update(lg)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in logs.items()}

    # ---- the loop
    def _teacher_lanes(self, batch: dict[str, Any]) -> Tensor:
        """[B] bool: which sequences' direction states the real onsets drive (``teacher_onsets``
        of them, drawn again when a lane starts a clip; fresh draws without lanes)."""
        B, d = len(batch["motion"]), self.dist
        # drawn for the global batch, this rank's rows taken: the same as one process would draw
        draw = (torch.rand(B * d.world, generator=self.noise) < self.cfg.teacher_onsets)[d.rank::d.world]
        if "reset" not in batch:
            return draw
        if self._teacher is None or len(self._teacher) != B:
            self._teacher = draw
        self._teacher = torch.where(batch["reset"], draw, self._teacher)
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
        _barrier(self.dist)  # every rank has looked before rank 0 deletes or writes anything
        if overwrite and self.dist.main and is_run_folder(self.out):
            clear_run(self.out)
        if resume:
            ck = latest_checkpoint(self.out)
            if ck is None:
                log.warning("--resume: no checkpoint in %s, starting fresh", self.out)
            else:
                self.load_checkpoint(ck)
        _barrier(self.dist)  # every rank has read the run before rank 0 rewrites its logs
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
        try:
            end = self.cfg.steps if stop_at is None else min(self.cfg.steps, stop_at)
            while self.step < end:
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
                data = self.lanes if (stage == "kp" and self.lanes is not None) else self.batches
                rec = _mean_over_ranks(self.train_step(stage, data.next()), self.dist, self.device)
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
        _barrier(self.dist)  # rank 0's last checkpoint is written when any rank returns
        wall = time.perf_counter() - t0
        return TrainResult(self.step, wall, (self.step - first) / max(wall, 1e-9), history,
                           self.out / "performer.safetensors")


def train(model_cfg: PerformerConfig, cfg: TrainConfig, data: str | Path, out: str | Path, *,
          resume: bool = False, overwrite: bool = False, device: str | None = None,
          init_from: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume training) a Performer; returns the run's summary. The out folder is
    checked (:func:`check_out_folder`) before the data is opened."""
    check_out_folder(out, cfg, None if init_from is not None else model_cfg, resume=resume, overwrite=overwrite)
    return Trainer(model_cfg, cfg, data, out, device=device, init_from=init_from,
                   progress=progress).run(resume, overwrite=overwrite)
