"""Shared bits of the benchmark scripts: machine facts, versions, statistics, JSON and
markdown output."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """Versions of everything a benchmark number depends on (None: not installed)."""
    from importlib import metadata

    import torch

    out: dict[str, str | None] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for name in ("letsplay", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "nnAudio"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: leave torch's choice); returns the threads in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    """Wall seconds of ``repeats`` calls of fn after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": statistics.median(ms),
        "p10_ms": ms[len(ms) // 10],
        "p90_ms": ms[(len(ms) * 9) // 10],
        "n": len(ms),
    }


@functools.lru_cache(maxsize=8)
def streaming_cqt(spec):
    """One StreamingCQT per AudioSpec, shared (it is stateless: the state is explicit, and
    building its kernels takes seconds)."""
    from letsplay.models.features import StreamingCQT

    return StreamingCQT(spec)


def progress_bar(total: int, desc: str, unit: str = "block", enabled: bool = True):
    """A tqdm bar on stderr (shown only when stderr is a terminal and ``enabled``)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled or not sys.stderr.isatty())


def dist(ms: Sequence[float]) -> dict[str, float]:
    """Distribution of values already in milliseconds: median, p90, p95, p99, max, mean."""
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 3 significant-ish digits, None shows as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | None) -> str:
    text = json.dumps(result, indent=2, sort_keys=False)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
