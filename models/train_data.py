"""Training batches: the deterministic, resumable :class:`Batches` of the ``cvg`` / ``stu`` /
``e2e`` stages, the stateful :class:`Lanes` of the ``kp`` stage (truncated backpropagation
through time), :func:`training_mean_pose` (the paper's avg condition) and the dataset's
instrument (:func:`resolve_instrument`).

Their positions are training state (saved in checkpoints, see
:mod:`letsplay.models.train_checkpoint`); under ``torchrun`` each rank reads its share of the
global batch (:class:`letsplay.models.train_dist.Dist`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from letsplay.models.train_dist import Dist


class _ResumableSampler(torch.utils.data.Sampler):
    """A ``DistributedSampler``'s indices for one epoch, starting ``skip`` items in."""

    def __init__(self, indices: list[int], skip: int) -> None:
        self.indices = indices[skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], Tensor) else vals
    return out


class Batches:
    """Deterministic batches: epoch ``e`` is a seeded permutation (``DistributedSampler``,
    rank's share); the position inside the epoch is part of the training state."""

    def __init__(self, dataset: Any, batch: int, seed: int, d: Dist, workers: int = 0,
                 epoch: int = 0, position: int = 0) -> None:
        from torch.utils.data import DistributedSampler

        self.ds, self.batch, self.workers = dataset, batch, workers
        self.sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch
        if self.per_epoch < 1:
            raise ValueError(f"the training set has {len(dataset)} sequences per rank, fewer than one batch "
                             f"of {batch}; use a smaller --batch / --seq-len or more data")
        self.epoch, self.position = epoch, position
        self._it: Iterator[dict[str, Any]] | None = None

    def _start(self) -> None:
        from torch.utils.data import DataLoader

        self.sampler.set_epoch(self.epoch)
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(self.epoch)
        idx = list(iter(self.sampler))[: self.per_epoch * self.batch]
        sampler = _ResumableSampler(idx, self.position * self.batch)
        loader = DataLoader(self.ds, batch_size=self.batch, sampler=sampler, num_workers=self.workers,
                            collate_fn=_collate, drop_last=True)
        self._it = iter(loader)

    def next(self) -> dict[str, Any]:
        if self.position >= self.per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        assert self._it is not None
        b = next(self._it)
        self.position += 1
        return b


def training_mean_pose(clips: list[Any]) -> np.ndarray | None:
    """Confidence-weighted mean keypoints of the training clips (the paper's avg condition)."""
    num, den = 0.0, 0.0
    for c in clips:
        kp, conf = c.keypoints()
        w = (conf > 0).astype(np.float64)[..., None]
        num = num + (kp * w).sum(0)
        den = den + w.sum(0)
    if isinstance(den, float) or (den == 0).any():
        return None
    return (num / den).astype(np.float32)


class Lanes:
    """Stateful batches for the KP stage (truncated backpropagation through time).

    ``batch`` lanes each read one training clip from its first frame to its end, ``T``
    frames per step; the trainer carries KHP's LSTM state from a lane's chunk to the next
    and restarts it (``reset``) where a lane starts a new clip. So KHP learns what it does
    live and in evaluation: run from a fresh state at the start of the audio, for as long
    as the music lasts -- with windows from the middle of a clip and a fresh state, what
    happened before the window (which way the bow goes) is unknowable. Clips come in a
    seeded order per epoch; a clip's tail shorter than ``T`` is skipped. The position
    (epoch, next clip, each lane's clip and frame) is training state.

    Under ``torchrun`` every rank keeps the bookkeeping of the global batch's
    ``batch * world`` lanes (the same on all ranks) and reads lanes ``rank``, ``rank +
    world``, ...: the ranks' lanes together are exactly the lanes of one process with
    ``batch * world`` sequences, in the order the ``DistributedSampler`` shards batches.
    """

    def __init__(self, dataset: Any, batch: int, seq_len: int, seed: int, d: Dist,
                 state: dict[str, Any] | None = None) -> None:
        self.ds, self.batch, self.T, self.seed, self.dist = dataset, batch, seq_len, seed, d
        self.n_lanes = batch * d.world
        n = len(dataset.clips)
        self.usable = [ci for ci in range(n) if dataset.clips[ci].n_frames >= seq_len]
        if len(self.usable) < self.n_lanes:
            raise ValueError(f"the training set has {len(self.usable)} clips of >= {seq_len} frames, fewer than "
                             f"{self.n_lanes} lanes; use a smaller --batch / --seq-len or more data")
        st = state or {"epoch": 0, "next": 0, "lanes": [None] * self.n_lanes}
        if len(st["lanes"]) != self.n_lanes:
            raise ValueError(f"the saved lane state has {len(st['lanes'])} lanes, this run {self.n_lanes} "
                             f"(--batch x processes); resume with the same settings")
        self.epoch, self.next_clip = int(st["epoch"]), int(st["next"])
        self.lanes: list[list[int] | None] = [None if x is None else [int(x[0]), int(x[1])] for x in st["lanes"]]
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.usable))
        return [self.usable[i] for i in perm]

    @property
    def position(self) -> int:
        return self.next_clip

    @property
    def per_epoch(self) -> int:
        return len(self._order)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next": self.next_clip, "lanes": self.lanes}

    def _new_clip(self) -> int:
        if self.next_clip >= len(self._order):
            self.epoch, self.next_clip = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        ci = self._order[self.next_clip]
        self.next_clip += 1
        return ci

    def next(self) -> dict[str, Any]:
        items, reset = [], []
        for j in range(self.n_lanes):
            lane = self.lanes[j]
            fresh = lane is None or lane[1] + self.T > self.ds.clips[lane[0]].n_frames
            if fresh:
                lane = self.lanes[j] = [self._new_clip(), 0]
            if j % self.dist.world == self.dist.rank:  # this rank's lane
                items.append(self.ds.item(lane[0], lane[1], self.T))
                reset.append(fresh)
            lane[1] += self.T
        out = _collate(items)
        out["reset"] = torch.tensor(reset)
        return out


def dataset_instruments(data: str | Path) -> list[str]:
    """The instruments of a dataset's training clips, sorted."""
    from letsplay.models.data.torch_dataset import open_sources

    return sorted({c.instrument for c in open_sources(data, split="train")})


def data_roots(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """One dataset folder or several (``train --data A B``: their training clips together,
    e.g. the same pieces rendered with two soundfonts) as a list; a folder given twice is refused."""
    roots = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    if not roots:
        raise ValueError("no dataset given; name one or more dataset folders")
    seen = [r.resolve() for r in roots]
    if len(set(seen)) < len(seen):
        raise ValueError(f"a dataset is given twice: {[str(r) for r in roots]}")
    return roots


def resolve_instrument(data: str | Path | Sequence[str | Path], instrument: str | None = None) -> str:
    """``instrument`` if the dataset's training clips hold it; None: the dataset's own one
    (refused, with the list, when it holds several). Several datasets must agree."""
    roots = data_roots(data)
    if len(roots) > 1:
        found = {r: resolve_instrument(r, instrument) for r in roots}
        if len(set(found.values())) > 1:
            raise ValueError("the datasets hold different instruments (" + ", ".join(
                f"{r}: {i}" for r, i in found.items()) + "); train one instrument at a time")
        return next(iter(found.values()))
    data = roots[0]
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
