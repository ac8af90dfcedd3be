"""Training under ``torchrun``: which rank this process is, and the few collectives the
trainer needs (each a no-op for one process).

``batch`` is per rank; the ranks together train on exactly the batch one process with
``batch * world`` would: rank ``r`` gets sequences ``r, r + world, ...`` of each global batch
(the ``DistributedSampler``'s shards of one seeded permutation; the KP lanes are dealt the
same way, every rank keeping the bookkeeping of all of them), the CVG noise is drawn for the
global batch and sliced alike, gradients are averaged with ``all_reduce`` before each update
(:func:`sync_grads`; explicit, because the stages are trained one at a time through the
Performer's step), and the logged losses are the ranks' mean (:func:`mean_over_ranks`).
Losses that are means over equal-size per-sequence parts (the frame and heatmap L1s, the
perceptual and adversarial losses) then equal one process's up to float rounding (tested: 2
CPU ranks x 2 vs 1 x 4); the confidence-weighted keypoint L2 does where the ranks'
confidence sums are equal (all synthetic data), and the discriminator's mismatched-audio
pairs are rolled within each rank's batch, so the ``stu`` stage's Eq. 6 term pairs other
sequences than one process does. Rank 0's weights are broadcast at the start
(:func:`broadcast_module`); at each checkpoint the ranks compare weight digests
(:func:`check_ranks_agree`, a difference is an error) and gather the lanes' KHP states
(:func:`gather_rows`); only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


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


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def sync_grads(params: list[nn.Parameter], d: Dist) -> None:
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


def broadcast_module(module: nn.Module, d: Dist) -> None:
    """Rank 0's parameters and buffers on every rank (no-op for one process)."""
    if d.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def mean_over_ranks(rec: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """The ranks' mean of each logged loss: the global batch's value (no-op for one process)."""
    if d.world == 1 or not rec:
        return rec
    import torch.distributed as dist

    keys = sorted(rec)
    t = torch.tensor([rec[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= d.world
    return dict(zip(keys, t.tolist(), strict=True))


def gather_rows(t: Tensor, d: Dist) -> Tensor:
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


def check_ranks_agree(module: nn.Module, d: Dist, step: int) -> None:
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
