"""ONNX export: stateless graphs whose recurrent state is explicit I/O, and a manifest.

``export_onnx(performer, out_dir)`` writes:

Names of state tensors, the stepped-graph vocabulary of :mod:`letsplay.models.stepping`:
each flat state tensor ``<name>`` (``khp.lstm_h``...) is the input ``STATE_IN + <name>``
and its next value the output ``STATE_OUT + <name>``; the front-to-back hand-over of the
pipelined pair is named ``MID + <name>``.

* ``performer.onnx`` -- the fused per-frame step: ``window`` [B, 84, 87] and every state
  input in; ``frame``, ``keypoints``, ``coarse``, ``heatmap`` (those the model has) and
  every state output out. The engine feeds the state outputs back
  (``stepping.feeds`` / ``stepping.next_state``).
* ``khp.onnx``, ``cvg.onnx`` (or ``warp.onnx``: keypoints in, the warped reference out),
  ``stu.onnx`` -- each stage alone, same naming (a host can run them on different devices,
  or swap one).
* ``front.onnx``, ``back.onnx`` -- the same step cut in two for a pipelined host (the
  engine's ``pipeline`` mode): ``front`` takes ``window`` and every state input and
  gives ``keypoints`` / ``coarse`` / ``heatmap``, every state output and the STU
  encoder's hand-over (``skip<i>``, ``fused``: the CNN-GRU's output, and ``audio``,
  each under the ``MID`` prefix); ``back`` (the GCN and the decoder, stateless) takes
  ``keypoints`` and the hand-over and gives ``frame``. Frame t's back half can run beside frame t + 1's front half.
* ``cqt_step.onnx`` -- the streaming CQT for a non-Python host: ``audio`` [B, hop]
  and the state ``cqt.tail`` in; ``column`` [B, n_bins, 1] and the next ``cqt.tail`` out.
  Feed the stream hop-sized chunks from its start: after chunk k the graph emits
  column k (column 0, at time 0, is silence: all zeros). ``causal`` specs only.
* ``manifest.json`` -- names, shapes (``"B"`` marks the dynamic batch), dtypes, the
  AudioSpec/VideoSpec, preset, instrument, the checkpoint's SHA-256, each graph's
  SHA-256, opset and the exporter / onnx / torch versions. Backends refuse a graph
  whose digest does not match, and a manifest from another checkpoint.
  ``variants`` (optional, written by :func:`record_variants` for :mod:`letsplay.export.quantize`)
  lists reduced-precision copies of a graph beside it (``performer.int8.onnx``, ``performer.fp16.onnx``) with
  their digests and measured quality against the fp32 graph; the same I/O names, shapes
  and float32 dtypes.

Per-frame shapes are fixed and the batch is dynamic (several streams in one call).
After export the graph's input and output shapes are read back and checked: the
dynamo exporter can silently specialise a dimension.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from letsplay.models.features import cqt_kernel_bank
from letsplay.models.files import sha256_file
from letsplay.models.performer import Performer
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.stepping import STATE_IN as STATE_IN  # re-exported: the stepped-graph prefixes
from letsplay.models.stepping import STATE_OUT as STATE_OUT
from letsplay.models.stepping import feeds, next_state, state_in_name, state_out_name

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "letsplay.export"
MANIFEST_VERSION = 1
OPSET = 18
PRECISIONS = ("fp32", "int8", "fp16")  # fp32: the exported graph itself; the rest: its variants


class ExportError(RuntimeError):
    """Export failed or produced a graph that does not check out."""


class ManifestError(ValueError):
    """An exported folder's manifest or graphs cannot be used; says which and what to do."""



# --------------------------------------------------------------------------- wrappers


class _FlatStep(nn.Module):
    """A stage's step over flat tensors: (inputs..., *state) -> (outputs..., *state)."""

    def __init__(self, fn: Callable[..., tuple[list[Tensor], dict[str, Tensor]]], state_names: Sequence[str],
                 n_inputs: int, owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner  # registers the parameters
        self.fn = fn
        self.state_names = list(state_names)
        self.n_inputs = n_inputs

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        inputs, st = args[: self.n_inputs], args[self.n_inputs:]
        outs, new = self.fn(*inputs, dict(zip(self.state_names, st, strict=True)))
        return (*outs, *(new[n] for n in self.state_names))


def _performer_step(p: Performer) -> tuple[_FlatStep, list[str], list[str]]:
    names = list(p.init_state(1).to_dict())
    probe, _ = p.step(torch.zeros(1, p.cfg.audio.n_bins, p.cfg.audio.window_columns), p.init_state(1))
    out_names = [k for k in ("frame", "keypoints", "coarse", "heatmap") if getattr(probe, k) is not None]

    def fn(window: Tensor, st: dict[str, Tensor]):
        o, new = p.step(window, p.state_from_dict(st))
        return [getattr(o, k) for k in out_names], new.to_dict()

    return _FlatStep(fn, names, 1, p), ["window"], out_names


def _pipeline_steps(p: Performer) -> dict[str, tuple[nn.Module, list[str], list[str]]]:
    """The step cut in two for a pipelined host: ``front`` (KHP, CVG, the STU encoder and
    CNN-GRU: all the state) and ``back`` (the GCN and the decoder: stateless).
    ``back(front(x))`` is ``performer.onnx``'s step."""
    names = list(p.init_state(1).to_dict())
    probe, _ = p.step(torch.zeros(1, p.cfg.audio.n_bins, p.cfg.audio.window_columns), p.init_state(1))
    shown = [k for k in ("keypoints", "coarse", "heatmap") if getattr(probe, k) is not None]
    mids = p.stu.mid_names
    kp_in = ["keypoints"] if p.stu.gcn is not None else []

    def front_fn(window: Tensor, st: dict[str, Tensor]):
        f, new = p.step_front(window, p.state_from_dict(st))
        return [*(getattr(f, k) for k in shown), *f.mid.tensors()], new.to_dict()

    class _Back(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.owner = p

        def forward(self, *args: Tensor) -> tuple[Tensor]:
            kp = args[0] if kp_in else None
            mid = p.stu.mid_from(list(args[len(kp_in):]))
            return (p.stu.decode(mid, kp),)

    return {"front": (_FlatStep(front_fn, names, 1, p), ["window"], shown + mids),
            "back": (_Back(), kp_in + mids, ["frame"])}


def _stage_steps(p: Performer) -> dict[str, tuple[_FlatStep, list[str], list[str], list[Tensor]]]:
    """Each stage as its own graph: (module, input names, output names, example inputs)."""
    import torch.nn.functional as F

    cfg = p.cfg
    window = torch.rand(1, cfg.audio.n_bins, cfg.audio.window_columns)
    st = p.init_state(1)
    out: dict[str, tuple[_FlatStep, list[str], list[str], list[Tensor]]] = {}
    kp = hm = coarse = None
    if p.khp is not None:
        names = list(st.khp.to_dict())
        cls = type(st.khp)

        def khp_fn(window: Tensor, s: dict[str, Tensor]):
            o, new = p.khp.step(window, cls.from_dict(s))
            return [o.keypoints, o.heatmap], new.to_dict()

        out["khp"] = (_FlatStep(khp_fn, names, 1, p.khp), ["window"], ["keypoints", "heatmap"], [window])
        o, _ = p.khp.step(window, st.khp)
        kp, hm = o.keypoints, o.heatmap
    if p.cvg is not None:
        names = list(st.cvg.to_dict())
        cls_c = type(st.cvg)

        def cvg_fn(window: Tensor, z: Tensor, s: dict[str, Tensor]):
            c, new = p.cvg.step(window, cls_c.from_dict(s), z)
            return [c], new.to_dict()

        z = torch.zeros(1, cfg.cvg.z_dim)
        out["cvg"] = (_FlatStep(cvg_fn, names, 2, p.cvg), ["window", "z"], ["coarse"], [window, z])
        coarse, _ = p.cvg.step(window, st.cvg)
    if p.warp is not None:  # the reference warped to the pose: keypoints in, coarse frame out, no state

        class _Warp(nn.Module):
            def forward(self, keypoints: Tensor) -> tuple[Tensor]:
                return (p.coarse_of(keypoints),)

        out["warp"] = (_Warp(), ["keypoints"], ["coarse"], [kp])
        coarse = p.coarse_of(kp)
    names = list(st.stu.to_dict())
    cls_s = type(st.stu)
    ins = [n for n, t in (("coarse", coarse), ("heatmap", hm), ("keypoints", kp)) if t is not None]
    examples = [t for t in (coarse, hm, kp) if t is not None]

    def stu_fn(*args: Any):
        *xs, window, s = args
        given = dict(zip(ins, xs, strict=True))
        c = given.get("coarse")
        if c is not None and not cfg.stu.residual and tuple(c.shape[-2:]) != tuple(cfg.work_size):  # CVG's -> STU's
            c = F.interpolate(c, size=cfg.work_size, mode="bilinear", align_corners=False)
        f, new = p.stu.step(c, given.get("heatmap"), given.get("keypoints"), window, cls_s.from_dict(s))
        return [f], new.to_dict()

    out["stu"] = (_FlatStep(stu_fn, names, len(ins) + 1, p.stu), [*ins, "window"], ["frame"], [*examples, window])
    return out


class CQTStep(nn.Module):
    """One hop of audio -> the one CQT column it completes (causal), tail as state."""

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        if spec.alignment != "causal":
            raise ExportError("cqt_step.onnx is exported for causal specs only (a centered column "
                              "completes mid-chunk); the fused performer graph takes CQT windows")
        # Exact-length kernels, one matrix product per octave over the carried tail: one
        # graph a host can run hop by hop (the Python CQT's segment DFT needs float64 state).
        groups, weights, back, ahead = cqt_kernel_bank(spec)
        self.spec = spec
        self.groups = groups
        self.context = back + ahead + spec.hop - 1
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", torch.from_numpy(w), persistent=False)
        self.hop = spec.hop

    def forward(self, audio: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        B, H = audio.shape
        x = torch.cat([tail, audio], dim=1)  # [B, context + hop]; the column's time is its end
        L = x.shape[1]
        parts = []
        for i, g in enumerate(self.groups):
            w = getattr(self, f"w{i}")  # [length, 2 * n_bins]
            seg = x[:, L + g.offset: L + g.offset + g.length]  # offset < 0: support ends at the column
            ri = seg @ w
            re, im = ri[:, : g.n_bins], ri[:, g.n_bins:]
            parts.append(torch.sqrt(re * re + im * im))
        col = torch.cat(parts, dim=1)
        if self.spec.scaling == "log":
            col = torch.log1p(col)
        return col.unsqueeze(-1), x[:, H:]


# --------------------------------------------------------------------------- export


# torch.onnx's registry warns once per export about each torchvision operator it skips when
# torchvision (which letsplay does not use) is not installed; only errors pass during an export.
_EXPORTER_CHATTER = ("torch.onnx._internal.exporter._registration",)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's notes about optional packages for the duration of an export
    (their loggers at ERROR, restored after); warnings of letsplay's own stay visible."""
    loggers = [logging.getLogger(n) for n in _EXPORTER_CHATTER]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_graph(module: nn.Module, args: Sequence[Tensor], path: Path, input_names: list[str],
                  output_names: list[str]) -> str:
    """Export with a dynamic batch; the dynamo exporter first, TorchScript as fallback.
    Returns the exporter used."""
    import warnings

    args = tuple(args)
    try:
        from torch.export import Dim

        B = Dim("batch", min=1, max=256)
        with warnings.catch_warnings(), quiet_exporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              opset_version=OPSET, dynamo=True, external_data=False,
                              dynamic_shapes=tuple({0: B} for _ in args), verbose=False)
        used = "dynamo"
    except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter
        log.info("dynamo export of %s failed (%s: %s); using the TorchScript exporter",
                 path.name, type(e).__name__, str(e).splitlines()[0][:200])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              opset_version=OPSET, dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in input_names + output_names})
        used = "torchscript"
    return used


def _io_spec(path: Path) -> tuple[list[dict], list[dict]]:
    import onnx

    m = onnx.load(str(path))

    inits = {i.name for i in m.graph.initializer}
    ins = [v for v in m.graph.input if v.name not in inits]
    batch = ins[0].type.tensor_type.shape.dim[0].dim_param  # the first input's batch symbol

    def one(v) -> dict:
        t = v.type.tensor_type
        dims = [("B" if d.dim_param == batch else d.dim_param or "?") if not d.HasField("dim_value")
                else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [one(v) for v in ins], [one(v) for v in m.graph.output]


def _check_shapes(io: list[dict], expected: dict[str, tuple[int, ...]], graph: str, strict: bool) -> list[dict]:
    """Dynamic batch first, then the per-frame shape. ``strict`` (inputs): every dim must
    be exactly as expected. Outputs may leave a non-batch dim symbolic (the exporter's
    shape inference), never fixed to a wrong value. Returns the entries with the true
    shapes (from the torch run) for the manifest."""
    by_name = {d["name"]: d for d in io}
    fixed = []
    for name, shape in expected.items():
        if name not in by_name:
            raise ExportError(f"{graph}: the exported graph lacks {name!r}")
        got = by_name[name]["shape"]
        ok = len(got) == len(shape) and got[0] == "B" and all(
            g == e or (not strict and isinstance(g, str) and g != "B") for g, e in zip(got[1:], shape[1:], strict=True))
        if not ok:
            raise ExportError(f"{graph}: {name} has shape {got} after export, expected "
                              f"[B, {', '.join(map(str, shape[1:]))}] (the exporter fixed a dimension)")
        fixed.append({**by_name[name], "shape": ["B", *shape[1:]]})
    return fixed


def session_options(threads: int | None = None, spinning: bool = False) -> Any:
    """onnxruntime SessionOptions as every letsplay session uses them: all graph
    optimisations, ``threads`` intra-op threads (None: onnxruntime's choice), one inter-op
    thread, and thread spinning off unless asked for -- the engine's CQT (torch) and other
    sessions share the cores, and idle-spinning threads would steal them (measured: 8x
    slower renders on 2 cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def export_onnx(performer: Performer, out_dir: str | Path, checkpoint_sha256: str | None = None,
                stages: bool = True, cqt: bool = True, pipeline: bool = True,
                progress: Callable[[str], None] | None = None) -> dict:
    """Export the Performer (fused step, optionally each stage, the front/back pipeline
    pair and the CQT step) to ``out_dir`` with its manifest; returns the manifest dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = performer.eval().to("cpu")
    cfg = p.cfg
    graphs: dict[str, dict] = {}
    exporters: dict[str, str] = {}
    note = progress or (lambda s: None)

    def do(name: str, module: nn.Module, args: list[Tensor], ins: list[str], outs: list[str]) -> None:
        note(name)
        args = [torch.cat([a, a], dim=0) for a in args]  # batch 2: nothing may specialise to 1
        path = out / f"{name}.onnx"
        tmp = out / f".{name}.onnx.tmp"
        with torch.no_grad():
            expected_out = module(*args)
        exporters[name] = _export_graph(module, args, tmp, ins, outs)
        tmp.replace(path)
        inputs, outputs = _io_spec(path)
        inputs = _check_shapes(inputs, {n: tuple(a.shape) for n, a in zip(ins, args, strict=True)}, name, True)
        outputs = _check_shapes(outputs, {n: tuple(t.shape) for n, t in zip(outs, expected_out, strict=True)},
                                name, False)
        graphs[name] = {"file": path.name, "sha256": sha256_file(path), "inputs": inputs, "outputs": outputs}

    fused, ins, outs = _performer_step(p)
    state0 = p.init_state(1).to_dict()
    if any(v.abs().sum() != 0 for v in state0.values()):
        raise ExportError("the Performer's initial state is not all zeros; the manifest format "
                          "assumes zero initial states")
    snames = list(state0)
    window = torch.rand(1, cfg.audio.n_bins, cfg.audio.window_columns)
    do("performer", fused, [window, *state0.values()], ins + [state_in_name(n) for n in snames],
       outs + [state_out_name(n) for n in snames])
    if stages:
        for name, (mod, s_ins, s_outs, examples) in _stage_steps(p).items():
            sub = getattr(p.init_state(1), name, None)  # the warp has no state
            st = {} if sub is None else sub.to_dict()
            do(name, mod, [*examples, *st.values()], s_ins + [state_in_name(f"{name}.{n}") for n in st],
               s_outs + [state_out_name(f"{name}.{n}") for n in st])
    if pipeline:
        steps = _pipeline_steps(p)
        mod, f_ins, f_outs = steps["front"]
        do("front", mod, [window, *state0.values()], f_ins + [state_in_name(n) for n in snames],
           f_outs + [state_out_name(n) for n in snames])
        with torch.no_grad():
            fo = mod(window, *state0.values())
        by_name = dict(zip(f_outs, fo, strict=False))
        mod, b_ins, b_outs = steps["back"]
        do("back", mod, [by_name[n] for n in b_ins], b_ins, b_outs)
    if cqt and cfg.audio.alignment == "causal":
        step = CQTStep(cfg.audio)
        tail = torch.zeros(1, step.context)
        do("cqt_step", step, [torch.zeros(1, cfg.audio.hop), tail], ["audio", state_in_name("cqt.tail")],
           ["column", state_out_name("cqt.tail")])

    import onnx

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "preset": cfg.preset,
        "instrument": cfg.instrument,
        "audio_spec": cfg.audio.to_dict(),
        "video_spec": cfg.video.to_dict(),
        "config": cfg.to_dict(),
        "checkpoint_sha256": checkpoint_sha256,
        "state": [{"name": n, "shape": ["B", *v.shape[1:]], "dtype": "float32", "init": "zeros"}
                  for n, v in state0.items()],
        "graphs": graphs,
        "opset": OPSET,
        "exporters": exporters,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "python": platform.python_version()},
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")
    log.info("exported %s to %s (%s)", cfg.preset, out, ", ".join(graphs))
    return manifest



def parity(model: Performer, folder: str | Path, frames: Iterable[np.ndarray]) -> dict[str, float]:
    """Torch against onnxruntime on stepped frames: the largest absolute difference of
    each output (``frame``, ``keypoints``, ..., every state output) over ``frames``.

    ``frames`` are CQT windows ``[n_bins, window_columns]`` (e.g. an array ``[N, n_bins,
    window_columns]``); each is one step of ``model`` and of the fused graph exported to
    ``folder``. Both get the torch trajectory's state each frame: a randomly initialised
    CVG's frame feedback amplifies float rounding, so two free-running float32 copies of
    it drift apart whatever their fidelity.
    """
    from letsplay.realtime.backends import OrtBackend, TorchBackend  # realtime builds on export

    tb, ob = TorchBackend(model), OrtBackend(folder)
    state = tb.init_state(1)
    worst: dict[str, float] = {}
    for w in frames:
        f = feeds({"window": np.asarray(w, dtype=np.float32)[None]}, state)
        a, b = tb.step(f), ob.step(f)
        state = next_state(a, state)
        for k in a:
            worst[k] = max(worst.get(k, 0.0), float(np.abs(a[k] - b[k]).max()))
    if not worst:
        raise ValueError("parity needs at least one frame; give CQT windows [N, n_bins, window_columns], N >= 1")
    return worst

# --------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A checked manifest of an exported folder."""

    folder: Path
    data: dict

    @property
    def audio(self) -> AudioSpec:
        return AudioSpec.from_dict(self.data["audio_spec"])

    @property
    def video(self) -> VideoSpec:
        return VideoSpec.from_dict(self.data["video_spec"])

    @property
    def state(self) -> list[dict]:
        return self.data["state"]

    @property
    def has_pipeline(self) -> bool:
        """True when the export has the front/back pair of the pipelined step."""
        return {"front", "back"} <= set(self.data["graphs"])

    @property
    def variants(self) -> dict[str, dict]:
        """Reduced-precision variants by precision (``int8``, ``fp16``): file, sha256,
        the graph they were made from, and their measured quality."""
        return self.data.get("variants", {})

    def precisions(self, name: str = "performer") -> list[str]:
        """The precisions graph ``name`` can be run at: fp32, then its listed variants."""
        return ["fp32", *(p for p in PRECISIONS[1:] if self.variants.get(p, {}).get("graph") == name)]

    def graph_path(self, name: str = "performer", precision: str = "fp32") -> Path:
        if name not in self.data["graphs"]:
            raise ManifestError(f"{self.folder}: no {name!r} graph (has {sorted(self.data['graphs'])})")
        if precision == "fp32":
            return self.folder / self.data["graphs"][name]["file"]
        if precision not in self.precisions(name):
            raise ManifestError(f"{self.folder}: no {precision} variant of the {name!r} graph (the manifest lists "
                                f"{', '.join(self.precisions(name))}); make one with `letsplay export onnx "
                                f"--checkpoint FILE --out {self.folder} --{precision}`")
        return self.folder / self.variants[precision]["file"]


def _is_shape(v: Any) -> bool:
    """``["B", d1, d2, ...]``: the batch symbol, then positive ints."""
    return (isinstance(v, list) and len(v) >= 1 and v[0] == "B"
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v[1:]))


def _check_structure(path: Path, data: dict, video: VideoSpec) -> None:
    """The parts of a manifest that backends read, checked for type and consistency, so an
    edited or damaged manifest is a ManifestError here rather than a KeyError later."""

    def bad(what: str) -> ManifestError:
        return ManifestError(f"{path}: {what}; the manifest was edited or damaged -- re-export the model")

    state = data["state"]
    if not isinstance(state, list):
        raise bad("'state' is not a list")
    names: set[str] = set()
    for i, s in enumerate(state):
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _is_shape(s.get("shape"))):
            raise bad(f"state entry {i} is not {{name, shape: ['B', sizes...]}}")
        if s["name"] in names:
            raise bad(f"state {s['name']!r} is listed twice")
        names.add(s["name"])
    graphs = data["graphs"]
    if not isinstance(graphs, dict) or not graphs:
        raise bad("'graphs' is not a non-empty object")
    for name, g in graphs.items():
        if not (isinstance(g, dict) and isinstance(g.get("file"), str) and isinstance(g.get("sha256"), str)):
            raise bad(f"graph {name!r} lacks its file name or SHA-256")
        f = g["file"]
        if not f or "\x00" in f or Path(f).name != f or f in (".", ".."):
            raise bad(f"graph {name!r} names {f!r}, not a file in the folder")
        for side in ("inputs", "outputs"):
            io = g.get(side, [])
            if not (isinstance(io, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                 and isinstance(t.get("shape"), list) for t in io)):
                raise bad(f"graph {name!r}: {side!r} is not a list of {{name, shape}}")
    variants = data.get("variants", {})
    if not isinstance(variants, dict):
        raise bad("'variants' is not an object")
    files = {g["file"] for g in graphs.values()}
    for prec, v in variants.items():
        if prec not in PRECISIONS[1:]:
            raise bad(f"variant {prec!r} is not one of {', '.join(PRECISIONS[1:])}")
        if not (isinstance(v, dict) and isinstance(v.get("file"), str) and isinstance(v.get("sha256"), str)):
            raise bad(f"variant {prec!r} lacks its file name or SHA-256")
        if v.get("precision") != prec or not isinstance(v.get("graph"), str) or v["graph"] not in graphs:
            raise bad(f"variant {prec!r} does not name its precision and a graph of this manifest")
        f = v["file"]
        if not f or "\x00" in f or Path(f).name != f or f in (".", "..") or f in files:
            raise bad(f"variant {prec!r} names {f!r}, not a file of its own in the folder")
        files.add(f)
    perf = graphs.get("performer")
    if isinstance(perf, dict):  # (its inputs are checked against the graph itself by the backends)
        outs = {t["name"]: t["shape"] for t in perf.get("outputs", [])}
        if outs and outs.get("frame") != ["B", 3, video.height, video.width]:
            raise bad(f"the performer graph's frame is {outs.get('frame')}, but video_spec says "
                      f"['B', 3, {video.height}, {video.width}]")
    cfg = data.get("config")
    if cfg is not None and (not isinstance(cfg, dict) or cfg.get("audio") != data["audio_spec"]
                            or cfg.get("video") != data["video_spec"]):
        raise bad("audio_spec / video_spec disagree with the stored config")


def read_manifest(folder: str | Path, checkpoint_sha256: str | None = None, verify: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``: format, version, specs, the graphs'
    digests, and (when given) that it was exported from that checkpoint."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"{folder}: no manifest.json; export the model first "
                            f"(letsplay export onnx --checkpoint FILE --out {folder})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); re-export the model") from e
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a letsplay export manifest; re-export the model")
    if data.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {data.get('version')!r}, this letsplay reads "
                            f"{MANIFEST_VERSION}; re-export with this version")
    for key in ("audio_spec", "video_spec", "state", "graphs"):
        if key not in data:
            raise ManifestError(f"{path}: the manifest lacks {key!r}; it was edited or truncated -- re-export")
    try:
        AudioSpec.from_dict(data["audio_spec"])
        video = VideoSpec.from_dict(data["video_spec"])
    except ValueError as e:
        raise ManifestError(f"{path}: bad spec in the manifest ({e}); re-export the model") from e
    _check_structure(path, data, video)
    if checkpoint_sha256 is not None and data.get("checkpoint_sha256") != checkpoint_sha256:
        raise ManifestError(f"{folder}: exported from checkpoint {data.get('checkpoint_sha256')}, not from "
                            f"the one given ({checkpoint_sha256}); re-export from that checkpoint")
    if verify:
        for g in data["graphs"].values():
            gp = folder / g["file"]
            if not gp.is_file():
                raise ManifestError(f"{folder}: graph {g['file']} is missing; re-export the model")
            if sha256_file(gp) != g["sha256"]:
                raise ManifestError(f"{gp}: the graph's SHA-256 does not match the manifest -- it is "
                                    f"corrupted or from another export; re-export the model")
        for prec, v in data.get("variants", {}).items():
            gp = folder / v["file"]
            if not gp.is_file():
                raise ManifestError(f"{folder}: the {prec} variant {v['file']} listed in the manifest is missing; "
                                    f"re-export the model (letsplay export onnx ... --{prec})")
            if sha256_file(gp) != v["sha256"]:
                raise ManifestError(f"{gp}: the {prec} variant's SHA-256 does not match the manifest -- it is "
                                    f"corrupted or from another export; re-export the model (... --{prec})")
    return Manifest(folder, data)


# --------------------------------------------------------------------------- variants


def record_variants(folder: str | Path, changes: Mapping[str, dict[str, Any] | None]) -> Manifest:
    """Add, replace or remove reduced-precision graph variants in ``folder/manifest.json``.

    ``changes`` maps a precision (``int8``, ``fp16``) to its ``variants`` entry (``graph``,
    ``file``, ``sha256``, ``precision`` and how it was made and measured, as
    :mod:`letsplay.export.quantize` builds it), or to None to remove that precision's entry;
    they are applied in order. A manifest left with no variants has no ``variants`` key.
    The manifest is replaced atomically (temp file, then rename) and read back with
    :func:`read_manifest`, which checks what was written (the variants' files and digests
    included); returns what it read."""
    folder = Path(folder)
    unknown = [p for p in changes if p not in PRECISIONS[1:]]
    if unknown:
        raise ValueError(f"unknown variant precision {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(PRECISIONS[1:])}")
    read_manifest(folder, verify=False)  # a clear error when there is no manifest to add to
    data = json.loads((folder / "manifest.json").read_text())
    variants = dict(data.get("variants", {}))
    for precision, entry in changes.items():
        if entry is None:
            variants.pop(precision, None)
        else:
            variants[precision] = entry
    if variants:
        data["variants"] = variants
    else:
        data.pop("variants", None)
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(folder / "manifest.json")
    return read_manifest(folder)
