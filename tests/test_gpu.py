"""GPU paths, checked with numbers: torch on CUDA (fp32, fp16, CUDA graphs), onnxruntime's
CUDA provider with IO binding, native TensorRT engines and their cache.

Every GPU test is marked ``gpu`` (TensorRT ones ``trt`` too) and skipped, with the reason,
where torch sees no CUDA GPU, onnxruntime has no CUDA provider, or tensorrt is not
importable: ``pytest -m "gpu or trt" tests/test_gpu.py`` on a GPU machine
(``scripts/gpu_check.sh`` sets one up). The unmarked tests at the top run everywhere: the
refusals (a CUDA graph without CUDA, ``--cuda-graph`` with another backend), and the IO
binding code paths exercised on the CPU.

Comparisons feed both sides the reference trajectory's state each frame (as
``test_export.py`` does): a randomly initialised CVG's frame feedback amplifies rounding
differences ~1.4x per frame, so free-running float implementations drift apart whatever
their fidelity. Frames are in [-1, 1]; PSNR is over peak-to-peak 2.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
from helpers import music_signal

from letsplay.models import stepping
from letsplay.models.features import CQT, frame_windows, frames_available
from letsplay.models.performer import Performer
from letsplay.models.presets import preset
from letsplay.realtime.backends import BackendError, OrtBackend, TorchBackend

N_FRAMES = 30

CUDA = torch.cuda.is_available()
NO_CUDA = (f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda or 'no, a CPU build'}); "
           f"scripts/gpu_check.sh installs a CUDA build on a GPU machine")
try:
    import onnxruntime as _ort

    ORT_PROVIDERS = _ort.get_available_providers()
except ImportError:  # pragma: no cover - onnxruntime is a test dependency
    ORT_PROVIDERS = []
ORT_CUDA = "CUDAExecutionProvider" in ORT_PROVIDERS
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

needs_cuda = pytest.mark.skipif(not CUDA, reason=NO_CUDA)
needs_ort_cuda = pytest.mark.skipif(
    not (CUDA and ORT_CUDA),
    reason=NO_CUDA if not CUDA else f"onnxruntime has no CUDAExecutionProvider (has {ORT_PROVIDERS}): the CPU "
                                    f"build is installed; onnxruntime-gpu (letsplay[gpu], instead of it) has one")
needs_trt = pytest.mark.skipif(
    not (CUDA and HAS_TRT),
    reason=NO_CUDA if not CUDA else "tensorrt is not importable: pip install 'letsplay[trt]' on the GPU machine")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Performer(preset("tiny")).eval()


@pytest.fixture(scope="module")
def windows(tiny):
    x = music_signal(N_FRAMES / 30 + 0.2, seed=21)
    cqt = CQT(tiny.cfg.audio)
    with torch.inference_mode():
        cols = cqt(torch.from_numpy(x))
    n = frames_available(len(x), cqt, tiny.cfg.video)
    w = frame_windows(cols, tiny.cfg.audio, tiny.cfg.video, min(n, N_FRAMES)).numpy()
    assert len(w) == N_FRAMES
    return w  # [N, n_bins, window_columns]


@pytest.fixture(scope="module")
def reference(tiny, windows):
    """The CPU fp32 torch trajectory: per frame, the feeds (state from the trajectory) and
    the outputs."""
    ref = TorchBackend(copy.deepcopy(tiny), "cpu")
    st = ref.init_state(1)
    feeds, outs = [], []
    for w in windows:
        f = stepping.feeds({"window": w[None]}, st)
        o = ref.step(f)
        st = stepping.next_state(o, st)
        feeds.append(f)
        outs.append(o)
    return feeds, outs


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from letsplay.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("export")
    export_onnx(copy.deepcopy(tiny), out, stages=False, cqt=False, pipeline=False)
    return out


@pytest.fixture
def strict_fp32():
    """No TF32 in torch's CUDA convolutions and matmuls while the test runs (cuDNN's is on
    by default): fp32 on the GPU is compared with fp32 on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_forced(backend, feeds):
    """Every frame from the reference trajectory's feeds."""
    return [backend.step(f) for f in feeds]


def worst(outs, ref_outs) -> dict[str, float]:
    w: dict[str, float] = {}
    for a, b in zip(outs, ref_outs, strict=True):
        assert set(a) == set(b)
        for k in b:
            assert a[k].dtype == np.float32 and a[k].shape == b[k].shape, k
            w[k] = max(w.get(k, 0.0), float(np.abs(a[k] - b[k]).max()))
    return w


def frames_psnr(outs, ref_outs) -> float:
    return psnr(np.stack([o["frame"] for o in outs]), np.stack([o["frame"] for o in ref_outs]))


def batched(feeds: list[dict], idx: list[int]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([feeds[i][k] for i in idx]) for k in feeds[0]}


# --------------------------------------------------------------------------- everywhere (CPU)


def test_cuda_graph_without_cuda_is_refused(tiny):
    with pytest.raises(BackendError, match="CUDA graphs .*need the CUDA device, not cpu"):
        TorchBackend(copy.deepcopy(tiny), "cpu", cuda_graph=True)
    if not CUDA:
        with pytest.raises(BackendError, match="sees no GPU"):
            TorchBackend(copy.deepcopy(tiny), "cuda", cuda_graph=True)
    with pytest.raises(ValueError, match="batch"):
        TorchBackend(copy.deepcopy(tiny), "cpu", batch=2)


@pytest.fixture(scope="module")
def cli_inputs(tiny, tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("cli")
    sf.write(d / "a.wav", music_signal(0.5, seed=3), 44100, subtype="FLOAT")
    tiny.save(d / "tiny.safetensors")
    return d


@pytest.mark.parametrize("extra, says", [
    (["--backend", "onnxruntime"], "--backend torch --compute cuda, not --backend onnxruntime"),
    (["--backend", "auto"], "not --backend auto"),
    (["--backend", "torch", "--compute", "cpu"], "needs --compute cuda"),
])
def test_cli_cuda_graph_refusals_exit_2(cli_inputs, capsys, extra, says):
    from letsplay.ui.cli import main

    rc = main(["render", str(cli_inputs / "a.wav"), "-o", str(cli_inputs / "o.mp4"),
               "--performer", str(cli_inputs / "tiny.safetensors"), "--cuda-graph", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--cuda-graph" in err and says in err, err
    assert not (cli_inputs / "o.mp4").exists()


def test_ort_io_binding_path_on_cpu(exported, reference):
    """The IO-binding code path (buffers per batch size, OrtValue feeds, output copies)
    on CPU buffers equals plain ``session.run``."""
    import onnxruntime as ort

    feeds, _ = reference
    plain, bound = OrtBackend(exported), OrtBackend(exported, io_binding=True)
    assert not plain.io_binding and bound.io_binding and bound.device == "CPUExecutionProvider"
    for f in (feeds[3], batched(feeds, [4, 5, 4]), feeds[6]):  # batch 1, 3, and 1 again (reused buffers)
        a, b = plain.step(f), bound.step(f)
        assert set(a) == set(b)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        kept = {k: v.copy() for k, v in b.items()}
        bound.step(feeds[7])
        assert all(np.array_equal(kept[k], b[k]) for k in b), "returned arrays must not alias the bound buffers"
    f = feeds[8]
    a = plain.step(f)
    b = bound.step({**f, "window": ort.OrtValue.ortvalue_from_numpy(f["window"])})
    c = bound.step(f)  # the static buffer is bound again
    assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(BackendError, match="missing"):
        bound.step({"window": f["window"]})


# --------------------------------------------------------------------------- torch on CUDA


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_fp32_matches_cpu(tiny, reference, strict_fp32):
    feeds, ref = reference
    outs = run_forced(TorchBackend(copy.deepcopy(tiny), "cuda"), feeds)
    w = worst(outs, ref)
    assert all(np.abs(o["frame"]).max() <= 1.0 for o in outs)
    assert w["frame"] <= 1e-3, w
    assert all(v <= 1e-3 for v in w.values()), w


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_equals_eager(tiny, reference, strict_fp32):
    feeds, _ = reference
    eager = TorchBackend(copy.deepcopy(tiny), "cuda")
    graph = TorchBackend(copy.deepcopy(tiny), "cuda", cuda_graph=True)
    assert "CUDA graph" in graph.device
    w = worst(run_forced(graph, feeds), run_forced(eager, feeds))
    assert all(v <= 1e-5 for v in w.values()), w
    first = graph._captured.graph
    for idx in ([1, 2], [3], [4, 5, 6, 4]):  # another batch size re-captures; the same one replays
        f = batched(feeds, idx)
        w = worst([graph.step(f)], [eager.step(f)])
        assert all(v <= 1e-5 for v in w.values()), (idx, w)
        assert graph._captured.batch == len(idx)
    assert graph._captured.graph is not first
    same = graph._captured.graph
    graph.step(batched(feeds, [7, 8, 9, 10]))
    assert graph._captured.graph is same


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_captured_at_construction(tiny, reference):
    feeds, _ = reference
    graph = TorchBackend(copy.deepcopy(tiny), "cuda", cuda_graph=True, batch=1)
    assert graph._captured is not None and graph._captured.batch == 1
    g = graph._captured.graph
    graph.step(feeds[0])
    assert graph._captured.graph is g


@pytest.mark.gpu
@needs_cuda
def test_fp16_cuda_vs_fp32_psnr(tiny, reference):
    feeds, ref = reference
    eager = run_forced(TorchBackend(copy.deepcopy(tiny), "cuda", "fp16"), feeds)
    graph = run_forced(TorchBackend(copy.deepcopy(tiny), "cuda", "fp16", cuda_graph=True), feeds)
    p_eager, p_graph = frames_psnr(eager, ref), frames_psnr(graph, ref)
    assert p_eager > 35.0 and p_graph > 35.0, (p_eager, p_graph)
    assert worst(graph, eager)["frame"] <= 1e-3  # the same fp16 kernels, replayed


# --------------------------------------------------------------------------- onnxruntime CUDA


@pytest.mark.gpu
@needs_ort_cuda
def test_ort_cuda_io_binding_vs_torch_cpu(exported, reference):
    feeds, ref = reference
    try:  # strict fp32 (the CUDA provider may use TF32 otherwise)
        ob = OrtBackend(exported, provider="cuda", provider_options={"use_tf32": "0"})
    except BackendError:  # an onnxruntime without that option
        ob = OrtBackend(exported, provider="cuda")
    assert ob.device == "CUDAExecutionProvider" and ob.io_binding
    w = worst(run_forced(ob, feeds), ref)
    assert all(v <= 1e-4 for v in w.values()), w
    f = batched(feeds, [2, 3, 2])
    r = ob.step(f)
    assert r["frame"].shape[0] == 3 and np.array_equal(r["frame"][0], r["frame"][2])


# --------------------------------------------------------------------------- TensorRT


@pytest.fixture(scope="module")
def trt_folder(exported, windows):
    """The export, with the float16 variant where TensorRT (11+) needs one for fp16."""
    import tensorrt as trt

    from letsplay.export.tensorrt import has_weak_fp16

    if not has_weak_fp16(trt):
        from letsplay.export.quantize import add_variants

        add_variants(exported, windows[:4], windows[:8], ["fp16"], min_psnr=None)
    return exported


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_tensorrt_fp32_matches_torch_cpu(trt_folder, reference):
    from letsplay.realtime.backends import TrtBackend

    feeds, ref = reference
    tb = TrtBackend(trt_folder, precision="fp32", max_batch=4)
    w = worst(run_forced(tb, feeds), ref)
    assert w["frame"] <= 1e-3 and all(v <= 1e-3 for v in w.values()), w
    r = tb.step(batched(feeds, [1, 2, 1]))
    assert np.abs(r["frame"][1] - ref[2]["frame"][0]).max() <= 1e-3
    assert np.array_equal(r["frame"][0], r["frame"][2])


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_tensorrt_fp16_psnr(trt_folder, reference):
    from letsplay.realtime.backends import TrtBackend

    feeds, ref = reference
    p = frames_psnr(run_forced(TrtBackend(trt_folder, precision="fp16", max_batch=4), feeds), ref)
    assert p > 35.0, p


@pytest.mark.gpu
@pytest.mark.trt
@needs_trt
def test_tensorrt_engine_cache(trt_folder):
    """Reused while nothing changes; rebuilt (another plan) when the precision or the
    batch range changes. The folder's own cache (the TrtBackend tests' engines, batch 1..4,
    are hits here when they ran first)."""
    from letsplay.export.onnx import read_manifest
    from letsplay.export.tensorrt import build_engine, engine_graph

    man = read_manifest(trt_folder)
    cache = trt_folder / "trt"
    g32, t32 = engine_graph(man, "fp32")
    a = build_engine(g32, cache, "fp32", max_batch=4, strongly_typed=t32)
    stamp = a.stat().st_mtime_ns
    assert build_engine(g32, cache, "fp32", max_batch=4, strongly_typed=t32) == a and a.stat().st_mtime_ns == stamp
    g16, t16 = engine_graph(man, "fp16")
    b = build_engine(g16, cache, "fp16", max_batch=4, strongly_typed=t16)
    assert b != a and b.is_file() and a.is_file()
    assert build_engine(g32, cache, "fp32", max_batch=4, strongly_typed=t32) == a and a.stat().st_mtime_ns == stamp
    n = len(list(cache.glob("*.plan")))
    c = build_engine(g32, cache, "fp32", max_batch=3, strongly_typed=t32)  # another batch range: another engine
    assert c not in (a, b) and len(list(cache.glob("*.plan"))) == n + 1
