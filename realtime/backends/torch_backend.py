"""The PyTorch Performer behind the flat-name interface (:class:`TorchBackend`): CPU or
CUDA; fp16 on CUDA, bf16 on CPUs that have it (opt-in: quality must be checked),
optional CUDA graphs (``cuda_graph``: the step captured once per batch size and
replayed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from letsplay.models.state import StateError
from letsplay.realtime.backends.base import MID, STATE_IN, STATE_OUT, BackendError

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    """One captured step: its batch size, the graph, the static inputs it reads (float32,
    by flat name) and the static outputs it writes (float32)."""

    batch: int
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class TorchBackend:
    """The PyTorch Performer behind the flat-name interface.

    ``dtype``: fp32 (default), fp16 (CUDA only) or bf16. CUDA fp32 follows torch's
    process-wide TF32 switches (``torch.backends.cudnn.allow_tf32`` is on by default, so
    convolutions may run in TF32 unless the application turns it off).

    ``cuda_graph`` (CUDA only): the step is captured into a :class:`torch.cuda.CUDAGraph`
    and replayed -- one launch instead of one per kernel. Static float32 input tensors
    (the window and every state tensor) are allocated for a batch size (``batch``, or the
    first step's); the step is warmed up on a side stream and captured on it, the casts
    to the model's dtype and back to float32 inside the graph. Each step copies the feeds
    into the static inputs, replays, and returns copies of the static outputs (float32
    numpy, the same names as the eager path). Another batch size re-captures (one graph is
    kept). ``torch.tensor(<data>, device=cuda)`` constants built inside the step are made
    once during the warm-up (a capture cannot copy from the host).
    """

    name = "torch"
    GRAPH_WARMUP = 3  # eager steps on the side stream before the capture (lazy init, cuDNN/cuBLAS handles)

    def __init__(self, performer, device: str = "cpu", dtype: str = "fp32", cuda_graph: bool = False,
                 batch: int | None = None, pipeline: bool = False) -> None:
        from letsplay.models.performer import Performer

        if not isinstance(performer, Performer):
            raise TypeError("TorchBackend needs a letsplay Performer")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("CUDA was asked for but torch sees no GPU; use --backend torch "
                               "--compute cpu, or install a CUDA build of torch")
        if cuda_graph and dev.type != "cuda":
            raise BackendError(f"CUDA graphs (--cuda-graph) need the CUDA device, not {dev}: they replay captured "
                               f"GPU kernels; use --backend torch --compute cuda on a GPU, or run without --cuda-graph")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        if self.dtype == torch.float16 and dev.type != "cuda":
            raise BackendError("fp16 runs on CUDA only; on CPU use fp32 (or bf16 where the CPU has it)")
        if batch is not None and (not cuda_graph or batch < 1):
            raise ValueError("batch (the CUDA graph's batch size) needs cuda_graph=True and must be >= 1")
        self.model = performer.eval().to(dev, self.dtype)
        self.cfg = performer.cfg
        self.audio, self.video = performer.cfg.audio, performer.cfg.video
        self.manifest = None  # a torch Performer, not an exported folder
        self.provider = "pytorch"
        self.precision = dtype
        self.torch_device = dev
        self.cuda_graph = bool(cuda_graph)
        self.device = str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})"
        if self.cuda_graph:
            self.device += ", CUDA graph"
        self.can_pipeline = not self.cuda_graph  # front/back halves run eager
        if pipeline and not self.can_pipeline:
            raise BackendError("--pipeline runs the step's halves eagerly; it does not combine with --cuda-graph")
        self.pipeline = bool(pipeline)  # the engine runs :meth:`front` / :meth:`back` on two threads
        st = self.model.init_state(1).to_dict()
        self.state_names = tuple(st)
        self._state_shapes = {k: tuple(v.shape[1:]) for k, v in st.items()}
        self._captured: _Captured | None = None
        self._stream = torch.cuda.Stream(device=dev) if self.cuda_graph else None  # warm-up and capture
        if self.cuda_graph and batch is not None:
            with torch.inference_mode():
                self._capture(batch)

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        st = self.model.init_state(batch, "cpu").to_dict()
        return {k: v.float().numpy() for k, v in st.items()}

    @staticmethod
    def _collect(out, new) -> dict[str, torch.Tensor]:
        res = {"frame": out.frame}
        for k in ("keypoints", "coarse", "heatmap"):
            v = getattr(out, k)
            if v is not None:
                res[k] = v
        for k, v in new.to_dict().items():
            res[STATE_OUT + k] = v
        return res

    def _inputs(self, feeds: Mapping[str, np.ndarray]):
        """(window, PerformerState) on the model's device and dtype from flat feeds."""
        dev, dt = self.torch_device, self.dtype
        window = torch.as_tensor(feeds["window"]).to(dev, dt)
        flat = {k[len(STATE_IN):]: torch.as_tensor(v).to(dev, dt)
                for k, v in feeds.items() if k.startswith(STATE_IN)}
        return window, self.model.state_from_dict(flat)

    @torch.inference_mode()
    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cuda_graph:
            return self._step_graph(feeds)
        out, new = self.model.step(*self._inputs(feeds))
        res = self._collect(out, new)
        return {k: v.float().cpu().numpy() for k, v in res.items()}

    # ------------------------------------------------------------------- pipeline halves

    @torch.inference_mode()
    def front(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`Performer.step_front`: the shown outputs but ``frame``, every
        the new state and the STU tensors :meth:`back` needs."""
        if self.cuda_graph:
            raise BackendError("the pipelined step runs eager; drop --cuda-graph (or the pipeline)")
        f, new = self.model.step_front(*self._inputs(feeds))
        res = {k: getattr(f, k) for k in ("keypoints", "coarse", "heatmap") if getattr(f, k) is not None}
        res.update({STATE_OUT + k: v for k, v in new.to_dict().items()})
        res.update(zip(self.model.stu.mid_names, f.mid.tensors(), strict=True))
        return {k: v.float().cpu().numpy() for k, v in res.items()}

    @torch.inference_mode()
    def back(self, front: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`Performer.step_back` on :meth:`front`'s result -> what :meth:`step` gives."""
        from letsplay.models.performer import PerformerFront

        dev, dt = self.torch_device, self.dtype

        def t(k: str) -> torch.Tensor | None:
            return None if k not in front else torch.as_tensor(front[k]).to(dev, dt)

        mid = self.model.stu.mid_from([t(k) for k in self.model.stu.mid_names])
        out = self.model.step_back(PerformerFront(t("coarse"), t("keypoints"), t("heatmap"), mid))
        res = {k: v for k, v in front.items() if not k.startswith(MID)}
        res["frame"] = out.frame.float().cpu().numpy()
        return res

    # ------------------------------------------------------------------- CUDA graph

    def _graph_step(self, static: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step over the static inputs, as captured: casts in, the model, casts out."""
        dt = self.dtype
        window = static["window"].to(dt)
        flat = {k[len(STATE_IN):]: v.to(dt) for k, v in static.items() if k.startswith(STATE_IN)}
        out, new = self.model.step(window, self.model.state_from_dict(flat))
        return {k: v.float() for k, v in self._collect(out, new).items()}

    def _capture(self, batch: int) -> _Captured:
        dev, cfg = self.torch_device, self.cfg
        self._captured = None  # the previous graph (and its memory pool) goes first
        with torch.cuda.device(dev):
            static = {"window": torch.zeros(batch, cfg.audio.n_bins, cfg.audio.window_columns, device=dev)}
            for k, shape in self._state_shapes.items():
                static[STATE_IN + k] = torch.zeros((batch, *shape), device=dev)
            stream = self._stream
            try:
                stream.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(stream):
                    for _ in range(self.GRAPH_WARMUP):
                        self._graph_step(static)
                torch.cuda.current_stream(dev).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    outputs = self._graph_step(static)
            except Exception as e:  # noqa: BLE001 - whatever broke the capture, say so and how to go on
                raise BackendError(f"the {cfg.preset} Performer's step could not be captured into a CUDA graph "
                                   f"at batch {batch} ({type(e).__name__}: {str(e).strip()[:300]}); run without "
                                   f"--cuda-graph") from e
        self._captured = _Captured(batch, graph, static, outputs)
        log.info("captured the %s step into a CUDA graph (batch %d, %s)", cfg.preset, batch, self.dtype)
        return self._captured

    def _step_graph(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "window" not in feeds:
            raise StateError("the feeds lack 'window'")
        batch = int(np.shape(feeds["window"])[0])
        cap = self._captured
        want = {"window", *(STATE_IN + k for k in self.state_names)}
        if set(feeds) != want:
            missing, extra = sorted(want - set(feeds)), sorted(set(feeds) - want)
            raise StateError(f"state names do not fit this model: missing {missing}, unexpected {extra}; the state "
                             f"comes from a model with another configuration")
        if cap is None or cap.batch != batch:
            cap = self._capture(batch)
        for k, dst in cap.inputs.items():
            src = torch.as_tensor(feeds[k])
            if tuple(src.shape) != tuple(dst.shape):
                raise StateError(f"{k!r} has shape {tuple(src.shape)}, this model needs "
                                 f"[B, {', '.join(map(str, dst.shape[1:]))}] (B = {batch}, from the window)")
            dst.copy_(src)  # any dtype / device in, float32 on the GPU
        cap.graph.replay()
        return {k: v.cpu().numpy() for k, v in cap.outputs.items()}  # .cpu(): a copy, after the replay
