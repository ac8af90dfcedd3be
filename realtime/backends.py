"""Inference backends: one ``step(feeds) -> outputs`` interface on flat names.

Names (the exported graphs' manifest uses the same):

* in:  ``window`` [B, n_bins, window_columns] float32, ``state_in.<name>`` for every
  state tensor of the Performer (``state_in.khp.lstm_h``, ``state_in.stu.gru_h``, ...);
* out: ``frame`` [B, 3, H, W] in [-1, 1], ``keypoints`` [B, 67, 2] (when the model has
  KHP), ``coarse`` and ``heatmap`` (debug views, when present), ``state_out.<name>``.

The engine owns the state: it feeds ``state_out.*`` back as ``state_in.*``. Backends:

* :class:`TorchBackend` -- the PyTorch Performer; CPU or CUDA; fp16 on CUDA, bf16 on
  CPUs that have it (opt-in: quality must be checked), optional CUDA graphs.
* :class:`OrtBackend` -- an exported ONNX graph through onnxruntime (CPU, CUDA, TensorRT
  execution providers); raises when the provider actually running is not the one
  asked for (onnxruntime silently falls back to CPU), unless ``allow_fallback``.
  ``precision`` picks the fp32 graph (default) or a reduced-precision variant the
  manifest lists (``int8``, ``fp16``: ``letsplay export onnx ... --int8 --fp16``).
* ``TrtBackend`` -- native TensorRT engines (``letsplay.export.tensorrt``), GPU only.

:func:`make_backend` builds one by name; ``auto`` picks the fastest one really
available and says which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_IN, STATE_OUT = "state_in.", "state_out."


class BackendError(RuntimeError):
    """A backend that cannot run as asked; the message says what to do."""


class Backend(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # what really runs: "cpu", "cuda:0 (NVIDIA H100)", "CPUExecutionProvider", ...
    state_names: tuple[str, ...]  # flat state names, without the state_in./state_out. prefix

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]: ...

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def describe(b: Backend) -> str:
    precision = getattr(b, "precision", "fp32")  # an onnxruntime variant: int8 / fp16
    return f"{b.name} on {b.device}" + ("" if precision == "fp32" else f" ({precision})")


# --------------------------------------------------------------------------- torch


class TorchBackend:
    """The PyTorch Performer behind the flat-name interface."""

    name = "torch"

    def __init__(self, performer, device: str = "cpu", dtype: str = "fp32") -> None:
        from letsplay.models.performer import Performer

        if not isinstance(performer, Performer):
            raise TypeError("TorchBackend needs a letsplay Performer")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("CUDA was asked for but torch sees no GPU; use --backend torch "
                               "--device cpu, or install a CUDA build of torch")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        if self.dtype == torch.float16 and dev.type != "cuda":
            raise BackendError("fp16 runs on CUDA only; on CPU use fp32 (or bf16 where the CPU has it)")
        self.model = performer.eval().to(dev, self.dtype)
        self.cfg = performer.cfg
        self.torch_device = dev
        self.device = str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})"
        self.state_names = tuple(self.model.init_state(1).to_dict())

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        st = self.model.init_state(batch, "cpu").to_dict()
        return {k: v.float().numpy() for k, v in st.items()}

    @torch.inference_mode()
    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        dev, dt = self.torch_device, self.dtype
        window = torch.as_tensor(feeds["window"]).to(dev, dt)
        flat = {k[len(STATE_IN):]: torch.as_tensor(v).to(dev, dt)
                for k, v in feeds.items() if k.startswith(STATE_IN)}
        state = self.model.state_from_dict(flat)
        out, new = self.model.step(window, state)
        res = {"frame": out.frame}
        for k in ("keypoints", "coarse", "heatmap"):
            v = getattr(out, k)
            if v is not None:
                res[k] = v
        for k, v in new.to_dict().items():
            res[STATE_OUT + k] = v
        return {k: v.float().cpu().numpy() for k, v in res.items()}


# --------------------------------------------------------------------------- onnxruntime

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtBackend:
    """An exported folder's fused graph through onnxruntime."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, provider: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False, spinning: bool = False, precision: str = "fp32") -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("onnxruntime is not installed; install letsplay[cpu] (or [gpu] on a "
                               "CUDA machine -- never both)") from e
        from letsplay.export.onnx import PRECISIONS, read_manifest

        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
        self.manifest = read_manifest(folder)
        if precision not in self.manifest.precisions("performer"):
            raise BackendError(f"{self.manifest.folder}: the export has no {precision} variant of performer.onnx "
                               f"(its manifest lists {', '.join(self.manifest.precisions('performer'))}); make one "
                               f"with `letsplay export onnx --checkpoint FILE --out {self.manifest.folder} "
                               f"--{precision}`")
        self.precision = precision
        want = PROVIDERS.get(provider, provider)
        available = ort.get_available_providers()
        if want not in available and not allow_fallback:
            raise BackendError(f"onnxruntime provider {want} is not available here (have {available}); "
                               f"install onnxruntime-gpu for CUDA/TensorRT, or pass --allow-fallback")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if not spinning:
            # Off by default: the engine's CQT (torch) and other sessions share the cores, and
            # idle-spinning ORT threads would steal them (measured: 8x slower renders on 2 cores).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [want] + (["CPUExecutionProvider"] if want != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(str(self.manifest.graph_path("performer", precision)), so,
                                                providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BackendError(f"{self.manifest.folder}: onnxruntime cannot load the graph ({e}); "
                               f"re-export the model") from e
        running = self.session.get_providers()
        if running[0] != want:
            msg = (f"onnxruntime runs {running[0]}, not the requested {want} (its libraries did not load); "
                   f"check the CUDA/cuDNN install, or pass --allow-fallback to accept {running[0]}")
            if not allow_fallback:
                raise BackendError(msg)
            log.warning(msg)
        self.device = running[0]
        self.state_names = tuple(d["name"] for d in self.manifest.state)
        self._state_shapes = {d["name"]: tuple(d["shape"][1:]) for d in self.manifest.state}
        self._check_graph_matches_manifest()
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _check_graph_matches_manifest(self) -> None:
        graph = {i.name: i.shape for i in self.session.get_inputs()}
        want = {"window": [None, self.manifest.audio.n_bins, self.manifest.audio.window_columns]}
        want.update({STATE_IN + k: [None, *s] for k, s in self._state_shapes.items()})
        if set(graph) != set(want):
            raise BackendError(f"{self.manifest.folder}: the manifest does not match the graph (graph inputs "
                               f"{sorted(graph)}, manifest {sorted(want)}); re-export the model")
        for k, shape in want.items():
            if list(graph[k][1:]) != list(shape[1:]):
                raise BackendError(f"{self.manifest.folder}: {k} is {graph[k]} in the graph but "
                                   f"[B, {', '.join(map(str, shape[1:]))}] in the manifest; re-export the model")
        types = {i.name: i.type for i in self.session.get_inputs()}
        if any(t != "tensor(float)" for t in types.values()):
            raise BackendError(f"{self.manifest.folder}: the {self.precision} graph does not take float32 inputs "
                               f"({types}); re-export the model")

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {k: np.zeros((batch, *s), np.float32) for k, s in self._state_shapes.items()}

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self._outputs, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})
        return dict(zip(self._outputs, res, strict=True))


# --------------------------------------------------------------------------- selection


def make_backend(name: str, performer_path: str | Path | None = None, performer=None,
                 device: str | None = None, allow_fallback: bool = False, threads: int | None = None,
                 precision: str = "fp32") -> Backend:
    """A backend by name: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``.

    ``performer`` is a loaded Performer (torch), ``performer_path`` a checkpoint file or
    an exported folder (manifest.json + graphs). ``precision`` (onnxruntime only): fp32
    or a variant the export lists.
    """
    if precision != "fp32" and name != "onnxruntime":
        raise BackendError(f"precision {precision} is for the onnxruntime backend (a variant of an exported "
                           f"graph); the {name} backend runs fp32")
    if name == "torch":
        if performer is None:
            from letsplay.models.performer import Performer

            performer = Performer.load(performer_path)
        return TorchBackend(performer, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "onnxruntime":
        if performer_path is None or not Path(performer_path).is_dir():
            raise BackendError("the onnxruntime backend runs an exported folder; export one with "
                               "`letsplay export onnx --checkpoint FILE --out DIR`")
        return OrtBackend(performer_path, provider=device or "cpu", threads=threads,
                          allow_fallback=allow_fallback, precision=precision)
    raise BackendError(f"unknown backend {name!r}; choose auto, torch, onnxruntime or tensorrt")
