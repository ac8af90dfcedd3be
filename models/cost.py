"""What a Performer costs: parameters and per-frame FLOPs of each stage
(:func:`stage_costs`), and the wall time of one :meth:`Performer.step`
(:func:`measure_step`). Used by ``letsplay model info`` and the benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from letsplay.models.performer import Performer


@dataclass(frozen=True)
class StageCost:
    name: str  # "khp", "cvg", "stu" or "total"
    params: int  # parameters
    flops: int  # FLOPs for one frame at batch 1 (FlopCounterMode: convs, matmuls, ...)


def stage_costs(model: Performer) -> list[StageCost]:
    """Parameters and per-frame FLOPs of each stage (batch 1), and the total.

    FLOPs are ``torch.utils.flop_counter.FlopCounterMode``'s count (2 per multiply-add
    of convolutions and matrix products; elementwise ops, interpolation and
    ``grid_sample`` are not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    dev = next(model.parameters()).device
    window = torch.rand(1, cfg.audio.n_bins, cfg.audio.window_columns, device=dev)
    state = model.init_state(1, dev)
    costs = []
    with torch.no_grad():
        kp = hm = coarse = None

        def count(fn: Any) -> tuple[Any, int]:
            with FlopCounterMode(display=False) as fc:
                r = fn()
            return r, fc.get_total_flops()

        if model.khp is not None:
            (o, _), fl = count(lambda: model.khp.step(window, state.khp))
            kp, hm = o.keypoints, o.heatmap
            costs.append(StageCost("khp", _params(model.khp), fl))
        if model.cvg is not None:
            (c, _), fl = count(lambda: model.cvg.step(window, state.cvg))
            coarse = F.interpolate(c, size=cfg.work_size, mode="bilinear", align_corners=False)
            costs.append(StageCost("cvg", _params(model.cvg), fl))
        if model.warp is not None:  # elementwise and gathers, which the counter skips: estimated
            coarse, fl = count(lambda: model.coarse_of(kp))
            costs.append(StageCost("warp", 0, fl + model.warp.flops()))
        _, fl = count(lambda: model.stu.step(coarse, hm, kp, window, state.stu))
        costs.append(StageCost("stu", _params(model.stu), fl))
    costs.append(StageCost("total", sum(c.params for c in costs), sum(c.flops for c in costs)))
    return costs


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@dataclass(frozen=True)
class StepTiming:
    frames: int  # frames timed (after warm-up)
    batch: int  # streams stepped together
    mean_ms: float  # mean wall time of one step
    median_ms: float  # median wall time of one step (robust to other load on the machine)
    p95_ms: float  # 95th percentile

    @property
    def fps(self) -> float:
        """Frames per second from the median step time (all ``batch`` streams counted)."""
        return 1000.0 * self.batch / self.median_ms


def measure_step(model: Performer, frames: int = 60, warmup: int = 10, batch: int = 1) -> StepTiming:
    """Time :meth:`Performer.step` on the model's device (torch eager, inference mode,
    state carried, batch ``batch``) for ``frames`` frames after ``warmup`` frames."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    window = torch.rand(batch, cfg.audio.n_bins, cfg.audio.window_columns, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        state = model.init_state(batch, dev)
        for _ in range(warmup):
            _, state = model.step(window, state)
        for _ in range(frames):
            sync()
            t0 = time.perf_counter()
            _, state = model.step(window, state)
            sync()
            times.append(1000.0 * (time.perf_counter() - t0))
    ts = sorted(times)
    return StepTiming(frames=frames, batch=batch, mean_ms=sum(ts) / len(ts), median_ms=ts[len(ts) // 2],
                      p95_ms=ts[min(len(ts) - 1, int(0.95 * len(ts)))])
