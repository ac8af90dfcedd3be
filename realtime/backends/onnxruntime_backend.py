"""An exported ONNX graph through onnxruntime (:class:`OrtBackend`): CPU, CUDA and
TensorRT execution providers. It raises when the provider actually running is not the
one asked for (onnxruntime silently falls back to CPU), unless ``allow_fallback``;
``device`` is the provider that really runs. ``precision`` picks the fp32 graph (default)
or a reduced-precision variant the manifest lists (``int8``, ``fp16``: ``letsplay export
onnx ... --int8 --fp16``). On the CUDA and TensorRT providers it runs with IO binding
(device buffers allocated once per batch size). Sessions come from
:func:`letsplay.export.runtime.ort_session`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letsplay.export.runtime import GPU_PROVIDERS, PROVIDERS, ort_provider, ort_session
from letsplay.realtime.backends.base import MID, STATE_IN, BackendError

log = logging.getLogger(__name__)

__all__ = ["GPU_PROVIDERS", "PROVIDERS", "OrtBackend"]


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
        want = ort_provider(provider)
        available = ort.get_available_providers()
        if want not in available and not allow_fallback:
            raise BackendError(f"onnxruntime provider {want} is not available here (have {available}); "
                               f"install onnxruntime-gpu for CUDA/TensorRT, or pass --allow-fallback")

        def load(graph: str):
            try:
                return ort_session(self.manifest.graph_path(graph, precision), want, threads, spinning,
                                   provider_options, available=available)
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
        self.provider = running[0]
        self.audio, self.video = self.manifest.audio, self.manifest.video
        self.cfg = None  # an exported graph, not a torch Performer
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
        """``front.onnx``: the shown outputs but ``frame``, the new state and the STU tensors for the back half."""
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
