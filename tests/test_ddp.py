"""Distributed training under ``torchrun`` (2 CPU processes, gloo), against one process.

The data sharding is designed so that the ranks' batches together are exactly the one
process batch of the same global size: the ``DistributedSampler`` hands rank ``r`` the
sequences ``r, r + world, ...`` of each global batch, the KP stage's lanes are dealt the
same way, and the CVG noise is drawn for the global batch and sliced alike. Gradients are
averaged over ranks, and the logged losses are the ranks' mean. So 2 ranks x batch 2 and
1 process x batch 4 (same seed) compute the same numbers, summed in another order.

This file is also the per-rank worker: ``torchrun ... tests/test_ddp.py DATA OUT BATCH``
trains three runs in one launch (a whole one in ``OUT/full``; one stopped at step 2 and
resumed, in ``OUT/part``) and writes each rank's weights and loss history.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 6  # 3 kp steps (lanes, carried LSTM state) then 3 cvg steps (sampler batches, noise z)


def _train_config(batch: int, **kw: object):  # noqa: ANN202 - torch imported lazily for the worker
    from letsplay.models.train import TrainConfig

    return TrainConfig(stage="all", steps=STEPS, stage_fractions=(1.0, 1.0, 0.0), batch=batch, seq_len=3,
                       ckpt_every=3, log_every=1, **kw)  # type: ignore[arg-type]


def _train(data: str, out: str, batch: int, stop_at: int | None = None, resume: bool = False) -> None:
    """Train (this process: one rank, or the whole single-process run) and write this rank's
    weights and per-step losses into ``out``."""
    import torch
    from safetensors.torch import save_file

    from letsplay.models.presets import preset
    from letsplay.models.train import Trainer

    torch.set_num_threads(1)
    tr = Trainer(preset("tiny", "trombone"), _train_config(batch), data, out, device="cpu", progress=False)
    res = tr.run(resume=resume, stop_at=stop_at)
    rank = tr.dist.rank
    tag = f"{rank}-resumed" if resume else str(rank)
    save_file({k: v.contiguous() for k, v in tr.model.state_dict().items()}, str(Path(out) / f"rank{tag}.safetensors"))
    (Path(out) / f"history{tag}.json").write_text(json.dumps(res.history))


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def dataset(trombone_set: Path) -> Path:
    return trombone_set


def _torchrun(data: Path, out: Path, batch: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(data), str(out), str(batch)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _curve(path: Path) -> list[dict[str, float]]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ddp(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``torchrun --nproc_per_node 2`` launch, batch 2 per rank: OUT/full and OUT/part."""
    out = tmp_path_factory.mktemp("ddp-runs")
    _torchrun(dataset, out, 2)
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(dataset: Path, ddp: Path, tmp_path: Path) -> None:
    import torch

    # the reference: one process, batch 4 (in this process: no WORLD_SIZE here)
    assert int(os.environ.get("WORLD_SIZE", "1")) == 1
    single = tmp_path / "single"
    _train(str(dataset), str(single), batch=4)
    ddp = ddp / "full"

    # (a) both ranks hold bit-identical weights after training
    w0, w1 = _weights(ddp / "rank0.safetensors"), _weights(ddp / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)

    # (b) the loss curve (the ranks' mean = the global batch's loss) equals one process's.
    # The two runs compute the same per-sequence numbers; only the order of the float32
    # sums differs (two partial means, then an average over ranks, vs one mean of four):
    # measured, the losses differ by at most 2e-7 relative over the six steps. A real
    # mismatch moves them far more: rank 0's half of the batch alone (1 process x batch 2)
    # differs by 3e-4 (cvg) to 3 (kp) relative. rel=1e-5 sits between, 50x above rounding.
    h_single, h0, h1 = _curve(single / "history0.json"), _curve(ddp / "history0.json"), _curve(ddp / "history1.json")
    assert h0 == h1  # every rank logs the same (averaged) numbers
    assert [h["step"] for h in h0] == [h["step"] for h in h_single] == list(range(1, STEPS + 1))
    assert {"kp", "kp_coord"} <= set(h0[0]) and "coarse" in h0[-1]  # both stages ran
    for a, b in zip(h0, h_single, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9), (a["step"], k, a[k], b[k])
    ws = _weights(single / "rank0.safetensors")
    assert all(torch.allclose(w0[k], ws[k], rtol=1e-3, atol=1e-5) for k in ws)

    # rank 0 wrote the run: its metrics are the averaged curve, its checkpoint the weights
    log = [json.loads(ln) for ln in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["kp"] for r in log[:3]] == [h["kp"] for h in h0[:3]]
    from letsplay.models.performer import Performer

    final = Performer.load(ddp / "performer.safetensors").state_dict()
    assert all(torch.equal(final[k], w0[k]) for k in final)


@pytest.mark.slow
def test_two_ranks_resume_exactly(ddp: Path) -> None:
    """An interrupted 2-rank run (stopped at step 2, inside the kp stage: the lanes' carried
    LSTM states of both ranks must be saved and handed back) resumes to the same losses and
    weights as an uninterrupted 2-rank run."""
    import torch

    full, part = ddp / "full", ddp / "part"
    h_full = _curve(full / "history0.json")
    h_part = _curve(part / "history0.json") + _curve(part / "history0-resumed.json")
    assert h_part == h_full  # exactly the same numbers
    a, b = _weights(full / "rank1.safetensors"), _weights(part / "rank1-resumed.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


if __name__ == "__main__":  # one torchrun worker: DATA OUT BATCH
    from letsplay.models.train_dist import finish_distributed

    data, out, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    _train(data, str(out / "full"), batch)
    _train(data, str(out / "part"), batch, stop_at=2)  # "interrupted" at step 2 (a checkpoint)
    _train(data, str(out / "part"), batch, resume=True)
    finish_distributed()
