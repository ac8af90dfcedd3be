"""Inference backends: one ``step(feeds) -> outputs`` interface on flat names.

Names (the exported graphs' manifest uses the same):

* in:  ``window`` [B, n_bins, window_columns] float32, ``state_in.<name>`` for every
  state tensor of the Performer (``state_in.khp.lstm_h``, ``state_in.stu.gru_h``, ...);
* out: ``frame`` [B, 3, H, W] in [-1, 1], ``keypoints`` [B, 67, 2] (when the model has
  KHP), ``coarse`` and ``heatmap`` (debug views, when present), ``state_out.<name>``.

The engine owns the state: it feeds ``state_out.*`` back as ``state_in.*``. Backends:

* :class:`TorchBackend` -- the PyTorch Performer; CPU or CUDA; fp16 on CUDA, bf16 on
  CPUs that have it (opt-in: quality must be checked), optional CUDA graphs
  (``cuda_graph``: the step captured once per batch size and replayed).
* :class:`OrtBackend` -- an exported ONNX graph through onnxruntime (CPU, CUDA, TensorRT
  execution providers); raises when the provider actually running is not the one
  asked for (onnxruntime silently falls back to CPU), unless ``allow_fallback``;
  ``device`` is the provider that really runs. ``precision`` picks the fp32 graph
  (default) or a reduced-precision variant the manifest lists (``int8``, ``fp16``:
  ``letsplay export onnx ... --int8 --fp16``). On the CUDA and TensorRT providers it
  runs with IO binding (device buffers allocated once per batch size).
* ``TrtBackend`` -- native TensorRT engines (``letsplay.export.tensorrt``), GPU only.

:func:`make_backend` builds one by name; ``auto`` picks the fastest one really
available and says which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from letsplay.models.state import StateError

log = logging.getLogger(__name__)

STATE_IN, STATE_OUT = "state_in.", "state_out."
MID = "mid."  # the tensors a pipelined step's front half hands to its back half


def pipelined(b: Backend) -> bool:
    """True when ``b`` can run a frame as two halves (``front`` then ``back``), so the
    engine can run frame t's back beside frame t + 1's front (``EngineConfig.pipeline``)."""
    return bool(getattr(b, "can_pipeline", False))


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
    halves = ", pipelined front/back" if getattr(b, "pipeline", False) else ""
    return f"{b.name} on {b.device}" + ("" if precision == "fp32" else f" ({precision})") + halves


# --------------------------------------------------------------------------- torch


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
        ``state_out.*`` and the ``mid.*`` tensors :meth:`back` needs."""
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


# --------------------------------------------------------------------------- onnxruntime

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class _OrtBinding:
    """IO binding for one batch size: the binding, and the device OrtValues bound to it
    (allocated once). ``foreign``: inputs bound to a caller's OrtValue on the last step."""

    io: object  # onnxruntime.IOBinding
    inputs: dict[str, object]  # name -> OrtValue
    outputs: dict[str, object]
    foreign: set[str]


class OrtBackend:
    """An exported folder's fused graph through onnxruntime.

    ``provider_options``: options for the requested provider (``{"device_id": "1"}``,
    ``{"use_tf32": "0"}`` for strict fp32 on the CUDA provider, ...). ``io_binding``:
    None (default) binds inputs and outputs to device buffers when the provider that
    runs is CUDA or TensorRT, and runs ``session.run`` on CPU; True/False force it (True
    on CPU binds CPU buffers: the same code path, for tests). With IO binding, a feed may
    also be an ``onnxruntime.OrtValue`` (already on the device): it is bound as it is.

    ``pipeline``: load the export's ``front.onnx`` / ``back.onnx`` pair instead of the
    fused graph (fp32, no IO binding), each session with ``threads`` intra-op threads (1
    unless given): :meth:`front` and :meth:`back` run a frame's halves, so the engine can
    keep one core on frame t's back half and one on frame t + 1's front half
    (``EngineConfig.pipeline``); :meth:`step` runs the two in a row.
    """

    name = "onnxruntime"

    def __init__(self, folder: str | Path, provider: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False, spinning: bool = False, precision: str = "fp32",
                 provider_options: Mapping[str, str] | None = None, io_binding: bool | None = None,
                 pipeline: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("onnxruntime is not installed; install letsplay[cpu] (or [gpu] on a "
                               "CUDA machine -- never both)") from e
        from letsplay.export.onnx import PRECISIONS, read_manifest, session_options

        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
        self.manifest = read_manifest(folder)
        if precision not in self.manifest.precisions("performer"):
            raise BackendError(f"{self.manifest.folder}: the export has no {precision} variant of performer.onnx "
                               f"(its manifest lists {', '.join(self.manifest.precisions('performer'))}); make one "
                               f"with `letsplay export onnx --checkpoint FILE --out {self.manifest.folder} "
                               f"--{precision}`")
        self.precision = precision
        self.can_pipeline = self.pipeline = bool(pipeline)  # the front/back graphs are what runs
        if pipeline:
            if precision != "fp32" or io_binding:
                raise BackendError("the pipelined onnxruntime step runs the fp32 front/back graphs without IO "
                                   "binding; drop --precision / IO binding, or the pipeline")
            if not self.manifest.has_pipeline:
                raise BackendError(f"{self.manifest.folder}: the export has no front/back graphs for the "
                                   f"pipelined step (exported by an older letsplay); re-export it with "
                                   f"`letsplay export onnx --checkpoint FILE --out {self.manifest.folder}`")
            threads = threads or 1
            io_binding = False
        want = PROVIDERS.get(provider, provider)
        available = ort.get_available_providers()
        if want not in available and not allow_fallback:
            raise BackendError(f"onnxruntime provider {want} is not available here (have {available}); "
                               f"install onnxruntime-gpu for CUDA/TensorRT, or pass --allow-fallback")
        so = session_options(threads, spinning)
        providers: list = [(want, {k: str(v) for k, v in provider_options.items()}) if provider_options else want]
        if want == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
            providers.append("CUDAExecutionProvider")  # the nodes TensorRT does not take run on CUDA, not CPU
        if want != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")

        def load(graph: str):
            try:
                return ort.InferenceSession(str(self.manifest.graph_path(graph, precision)), so, providers=providers)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise BackendError(f"{self.manifest.folder}: onnxruntime cannot load {graph}.onnx ({e}); "
                                   f"re-export the model") from e

        if pipeline:
            self._front, self._back = load("front"), load("back")
            self.session = self._front  # the session whose providers and inputs are checked below
            self._front_outputs = [o.name for o in self._front.get_outputs()]
            self._back_inputs = [i.name for i in self._back.get_inputs()]
        else:
            self.session = load("performer")
        running = self.session.get_providers()
        if running[0] != want:
            msg = (f"onnxruntime runs {running[0]}, not the requested {want} (its libraries did not load); "
                   f"check the CUDA/cuDNN install, or pass --allow-fallback to accept {running[0]}")
            if not allow_fallback:
                raise BackendError(msg)
            log.warning(msg)
        self.device = running[0]  # what really runs: the session's first provider
        self.state_names = tuple(d["name"] for d in self.manifest.state)
        self._state_shapes = {d["name"]: tuple(d["shape"][1:]) for d in self.manifest.state}
        self._check_graph_matches_manifest()
        self._outputs = [o.name for o in self.session.get_outputs()]
        on_gpu = self.device in GPU_PROVIDERS
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        if self.io_binding:
            self._ort = ort
            opts = self.session.get_provider_options().get(self.device, {})
            self._bind_device = ("cuda", int(opts.get("device_id", 0) or 0)) if on_gpu else ("cpu", 0)
            self._in_shapes = {"window": (self.manifest.audio.n_bins, self.manifest.audio.window_columns),
                               **{STATE_IN + k: s for k, s in self._state_shapes.items()}}
            self._out_shapes = self._output_shapes()
            self._bindings: dict[int, _OrtBinding] = {}

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

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-frame output shapes for the device buffers: the manifest's (the true shapes
        from the torch run at export), else the graph's where every dim is fixed."""
        listed = {d["name"]: d["shape"][1:] for d in self.manifest.data["graphs"]["performer"].get("outputs", [])}
        out = {}
        for o in self.session.get_outputs():
            shape = listed.get(o.name, o.shape[1:])
            if o.type != "tensor(float)" or not all(isinstance(d, int) and d > 0 for d in shape):
                raise BackendError(f"{self.manifest.folder}: output {o.name} is {o.type} {o.shape}; IO binding needs "
                                   f"float32 outputs of known per-frame shape -- re-export the model")
            out[o.name] = tuple(shape)
        return out

    def init_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {k: np.zeros((batch, *s), np.float32) for k, s in self._state_shapes.items()}

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.can_pipeline:
            return self.back(self.front(feeds))
        if self.io_binding:
            return self._step_bound(feeds)
        res = self.session.run(self._outputs, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})
        return dict(zip(self._outputs, res, strict=True))

    def front(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``front.onnx``: the shown outputs but ``frame``, every ``state_out.*`` and ``mid.*``."""
        if not self.can_pipeline:
            raise BackendError("this backend runs the fused graph; open it with pipeline=True (--pipeline)")
        res = self._front.run(self._front_outputs, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})
        return dict(zip(self._front_outputs, res, strict=True))

    def back(self, front: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``back.onnx`` on :meth:`front`'s result -> what the fused graph gives."""
        if not self.can_pipeline:
            raise BackendError("this backend runs the fused graph; open it with pipeline=True (--pipeline)")
        (frame,) = self._back.run(["frame"], {k: front[k] for k in self._back_inputs})
        res = {k: v for k, v in front.items() if not k.startswith(MID)}
        res["frame"] = frame
        return res

    # ------------------------------------------------------------------- IO binding

    def _binding(self, batch: int) -> _OrtBinding:
        b = self._bindings.get(batch)
        if b is None:
            kind, dev_id = self._bind_device
            value = self._ort.OrtValue.ortvalue_from_shape_and_type
            io = self.session.io_binding()
            ins = {n: value([batch, *s], np.float32, kind, dev_id) for n, s in self._in_shapes.items()}
            outs = {n: value([batch, *self._out_shapes[n]], np.float32, kind, dev_id) for n in self._outputs}
            for n, v in ins.items():
                io.bind_ortvalue_input(n, v)
            for n in self._outputs:
                io.bind_ortvalue_output(n, outs[n])
            b = self._bindings[batch] = _OrtBinding(io, ins, outs, set())
        return b

    def _step_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        OrtValue = self._ort.OrtValue
        if set(feeds) != set(self._in_shapes):
            missing, extra = sorted(set(self._in_shapes) - set(feeds)), sorted(set(feeds) - set(self._in_shapes))
            raise BackendError(f"the feeds do not fit the graph: missing {missing}, unexpected {extra}")
        w = feeds["window"]
        batch = int(w.shape()[0] if isinstance(w, OrtValue) else np.shape(w)[0])
        b = self._binding(batch)
        for n, static in b.inputs.items():
            v = feeds[n]
            if isinstance(v, OrtValue):  # the caller's buffer (on the device): bound as it is
                if tuple(v.shape()) != (batch, *self._in_shapes[n]):
                    raise BackendError(f"{n} is {tuple(v.shape())}, the graph needs "
                                       f"{(batch, *self._in_shapes[n])} (B = {batch}, from the window)")
                b.io.bind_ortvalue_input(n, v)
                b.foreign.add(n)
                continue
            a = np.ascontiguousarray(v, np.float32)
            if a.shape != (batch, *self._in_shapes[n]):
                raise BackendError(f"{n} is {a.shape}, the graph needs {(batch, *self._in_shapes[n])} "
                                   f"(B = {batch}, from the window)")
            static.update_inplace(a)  # host -> the buffer allocated for this batch size
            if n in b.foreign:
                b.io.bind_ortvalue_input(n, static)
                b.foreign.discard(n)
        b.io.synchronize_inputs()
        self.session.run_with_iobinding(b.io)
        b.io.synchronize_outputs()
        res = b.io.copy_outputs_to_cpu()  # in the order the outputs were bound: self._outputs
        if self._bind_device[0] == "cpu":  # CPU OrtValues' arrays can share the bound buffers
            res = [np.array(r, copy=True) for r in res]
        return dict(zip(self._outputs, res, strict=True))


# --------------------------------------------------------------------------- selection


def make_backend(name: str, performer_path: str | Path | None = None, performer=None,
                 device: str | None = None, allow_fallback: bool = False, threads: int | None = None,
                 precision: str = "fp32", cuda_graph: bool = False) -> Backend:
    """A backend by name: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``.

    ``performer`` is a loaded Performer (torch), ``performer_path`` a checkpoint file or
    an exported folder (manifest.json + graphs). ``precision`` (onnxruntime only): fp32
    or a variant the export lists. ``cuda_graph`` (torch on CUDA only): see TorchBackend.
    """
    if precision != "fp32" and name != "onnxruntime":
        raise BackendError(f"precision {precision} is for the onnxruntime backend (a variant of an exported "
                           f"graph); the {name} backend runs fp32")
    if cuda_graph and name != "torch":
        raise BackendError(f"CUDA graphs are for the torch backend on CUDA, not the {name} backend")
    if name == "torch":
        if performer is None:
            from letsplay.models.performer import Performer

            performer = Performer.load(performer_path)
        return TorchBackend(performer, device or ("cuda" if torch.cuda.is_available() or cuda_graph else "cpu"),
                            cuda_graph=cuda_graph)
    if name == "onnxruntime":
        if performer_path is None or not Path(performer_path).is_dir():
            raise BackendError("the onnxruntime backend runs an exported folder; export one with "
                               "`letsplay export onnx --checkpoint FILE --out DIR`")
        return OrtBackend(performer_path, provider=device or "cpu", threads=threads,
                          allow_fallback=allow_fallback, precision=precision)
    raise BackendError(f"unknown backend {name!r}; choose auto, torch, onnxruntime or tensorrt")
