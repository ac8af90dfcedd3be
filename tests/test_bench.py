"""The benchmark scripts at a tiny size: every run() gives the structure its JSON promises,
with values that are sane and derived from what was measured (no timing thresholds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import fps, latency, roof, scaling
from benchmarks.common import dist, markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fps_result(tmp_path_factory):
    return fps.run(presets=("tiny",), streams=(1, 2), frames=6, block=3, warmup=1,
                   backends=("torch", "onnxruntime", "tensorrt-fp16"), threads=1, gemm_n=256, gemm_repeats=3,
                   progress=False, workdir=str(tmp_path_factory.mktemp("fps")))


def test_dist_and_table():
    d = dist([3.0, 1.0, 2.0, 10.0])
    assert d["median_ms"] == 2.5 and d["max_ms"] == 10.0 and d["n"] == 4
    assert d["median_ms"] <= d["p90_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["max_ms"]
    t = markdown_table(["a", "b"], [[1, None], [0.12345, "x"]])
    assert t.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | - |", "| 0.123 | x |"]


def test_roof_from_gemm_and_flops():
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset

    g = roof.gemm_gflops("cpu", n=128, repeats=3)
    assert g["gflops"] > 0 and len(g["samples"]) == 3 and g["threads"] == torch.get_num_threads()
    fl = roof.frame_flops(Performer(preset("tiny")).eval())
    assert set(fl) == {"khp", "cvg", "stu", "cqt", "total"}
    assert all(v > 0 for v in fl.values())
    assert fl["total"] == pytest.approx(sum(v for k, v in fl.items() if k != "total"))
    r = roof.roof(fl, g["gflops"])
    assert r["fps"] == pytest.approx(g["gflops"] * 1e9 / fl["total"])
    assert r["ms_per_frame"] == pytest.approx(1000 / r["fps"])
    assert r["stu_ms"] + r["khp_ms"] + r["cvg_ms"] + r["cqt_ms"] == pytest.approx(r["ms_per_frame"])


def test_fps_structure_and_values(fps_result):
    r = fps_result
    json.dumps(r)  # JSON-able
    m = r["machine"]
    assert m["cpu"] and m["torch"] and "onnxruntime" in m["versions"]
    assert r["threads"] == 1 and r["roof"]["cpu-fp32"]["gflops"] > 0
    got = {(x["backend"], x["streams"]) for x in r["results"]}
    assert got == {("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    # every asked backend either ran or says why not: here (no TensorRT, no GPU) it names what is missing
    if "tensorrt-fp16" not in {x["backend"] for x in r["results"]}:
        assert "TensorRT" in r["unavailable"]["tensorrt-fp16"] or "CUDA" in r["unavailable"]["tensorrt-fp16"]
    for x in r["results"]:
        assert x["preset"] == "tiny" and x["device"]
        e2e = x["e2e_ms"]
        assert e2e["n"] == 6 and 0 < e2e["median_ms"] <= e2e["p90_ms"] <= e2e["max_ms"]
        assert x["fps"] > 0 and x["fps"] == pytest.approx(x["streams"] * 1000 / e2e["median_ms"])
        assert x["fps_per_stream"] == pytest.approx(x["fps"] / x["streams"])
        assert x["cqt_ms"]["median_ms"] > 0 and x["step_ms"]["median_ms"] > 0
        assert 0 < x["fraction_of_roof"] <= 1.5
        assert x["fraction_of_roof"] == pytest.approx(x["fps"] / x["roof"]["fps"])
        assert x["roof"]["fps"] == pytest.approx(r["roof"]["cpu-fp32"]["gflops"] * 1e9
                                                 / r["flops_per_frame"]["tiny"]["total"])
        assert set(x["stages_ms"]) == {"khp", "cvg", "stu"}  # torch modules / the per-stage graphs
        assert all(v["median_ms"] > 0 for v in x["stages_ms"].values())
        assert all(0 < f <= 1.5 for f in x["stages_fraction_of_roof"].values())
    assert {x["device"] for x in r["results"] if x["backend"] == "onnxruntime"} == {"CPUExecutionProvider"}
    by = {(x["backend"], x["streams"]): x for x in r["results"]}
    for s in r["speedups_vs_torch_eager"]:
        t, o = by[("torch", s["streams"])], by[(s["backend"], s["streams"])]
        assert s["step_speedup"] == pytest.approx(t["step_ms"]["median_ms"] / o["step_ms"]["median_ms"])
        assert s["e2e_speedup"] == pytest.approx(t["e2e_ms"]["median_ms"] / o["e2e_ms"]["median_ms"])
    i6 = r["ort_fused_vs_torch_eager"]
    assert [s["streams"] for s in i6] == [1, 2]
    for s in i6:
        assert s["speedup_ort_fused_vs_torch_eager"] == pytest.approx(1 / s["ort_over_torch_time_ratio"])
        assert s["meets_target"] == (s["speedup_ort_fused_vs_torch_eager"] >= 1.5)
    (b,) = r["baseline"]
    fastest = min((x for x in r["results"] if x["streams"] == 1), key=lambda x: x["e2e_ms"]["median_ms"])
    assert b["ours"]["backend"] == fastest["backend"]
    assert b["speedup"] == pytest.approx(b["naive"]["e2e"]["median_ms"] / b["ours"]["e2e"]["median_ms"])
    assert b["naive"]["cqt"]["median_ms"] > 0 and "nnAudio" in b["naive"]["what"]
    md = fps.markdown(r)
    assert "| tiny | 1 | torch | cpu |" in md and "onnxruntime" in md and "naive" in md


def test_latency_through_the_live_engine():
    r = latency.run(seconds=1.5, preset="tiny", backend="torch", threads=1, progress=False)
    json.dumps(r)
    assert r["backend"] == "torch" and r["device"] == "cpu" and r["engine"]["realtime"] is True
    assert r["frames"] > 0 and r["errors"] == 0
    assert r["frames"] + r["dropped"] == pytest.approx(1.5 * 30, abs=2)
    lat = r["latency_ms"]
    assert 0 < lat["median_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert lat["n"] == r["frames"]
    assert r["fps"] > 0 and r["audio_seconds"] == pytest.approx(1.5, abs=0.01)
    assert "| p50 ms |" in latency.markdown(r)


def test_scaling_sweeps_and_plots(tmp_path):
    out = tmp_path / "scaling_tiny.json"
    r = scaling.run(preset="tiny", sizes=(32, 36, 64), streams=(1, 2), backends=("torch", "onnxruntime"),
                    frames=4, block=2, warmup=1, threads=1, gemm_n=128, gemm_repeats=3, json_path=str(out),
                    progress=False, onnx_cache=str(tmp_path / "cache"))
    json.dumps(r)
    assert set(r["unsupported_sizes"]) == {"36"} and "divisible" in r["unsupported_sizes"]["36"]
    assert {(x["backend"], x["size"]) for x in r["resolution"]} == {(b, s) for b in ("torch", "onnxruntime")
                                                                   for s in (32, 64)}
    assert {(x["backend"], x["streams"]) for x in r["streams"]} == {(b, n) for b in ("torch", "onnxruntime")
                                                                   for n in (1, 2)}
    g = {x["size"]: x["gflops_per_frame"] for x in r["resolution"] if x["backend"] == "torch"}
    assert g[64] > g[32] > 0
    for x in r["resolution"] + r["streams"]:
        assert x["fps"] > 0 and 0 < x["fraction_of_roof"] <= 1.5
        assert x["fraction_of_roof"] == pytest.approx(x["fps"] / x["roof"]["fps"])
    for x in r["resolution"]:
        assert x["roof_ms_per_frame"] == pytest.approx(1000 / x["roof"]["fps"])
    assert set(r["plots"]) == {"torch", "onnxruntime"}
    import matplotlib.image

    for b, p in r["plots"].items():
        assert p == str(tmp_path / f"scaling_tiny_{b}.png")
        data = open(p, "rb").read()
        assert data[:8] == PNG_MAGIC
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert "plots:" in scaling.markdown(r)


def test_letsplay_bench_cli_writes_json(tmp_path, monkeypatch, capsys):
    from letsplay.ui.cli import main

    monkeypatch.setenv("LETSPLAY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert main(["bench", "--presets", "tiny", "--frames", "4", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ran: torch on cpu" in text and "onnxruntime on CPUExecutionProvider" in text
    assert "| tiny | 1 | torch | cpu |" in text
    r = json.loads(out.read_text())
    assert r["benchmark"] == "fps" and r["settings"]["presets"] == ["tiny"] and r["settings"]["streams"] == [1]
    assert {x["backend"] for x in r["results"]} == {"torch", "onnxruntime"}
    assert all(x["fps"] > 0 and math.isfinite(x["fps"]) for x in r["results"])
    assert r["baseline"] and r["baseline"][0]["speedup"] > 0
    assert any((tmp_path / "cache" / "bench-onnx").iterdir())  # the export is kept for the next run


def test_bench_cli_rejects_bad_frames(capsys):
    from letsplay.ui.cli import main

    assert main(["bench", "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err


def test_bench_runs_from_a_built_wheel_outside_the_checkout(tmp_path):
    """`letsplay bench` needs no source checkout: the benchmarks ship in the package."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(repo), "-w", str(wheels)], check=True,
                   cwd=tmp_path)
    (whl,) = wheels.glob("letsplay-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(whl)], check=True, cwd=tmp_path)
    out = tmp_path / "bench.json"
    code = ("import sys, letsplay.benchmarks.fps as f; from letsplay.ui.cli import main; print(f.__file__); "
            f"sys.exit(main(['bench', '--presets', 'tiny', '--frames', '2', '--threads', '1', '--no-live-check', "
            f"'--json', {str(out)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(site), "LETSPLAY_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0].startswith(str(site))  # the installed copy ran, not the checkout's
    assert json.loads(out.read_text())["settings"]["presets"] == ["tiny"]


def test_fps_measures_a_warp_performer_checkpoint_with_its_warp_stage(cello_set, tmp_path):
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.performer import Performer
    from letsplay.models.presets import ablate, preset
    from letsplay.models.warp import reference_from_clip

    p = Performer(ablate(preset("tiny", "cello"), "warp"))
    p.set_reference(reference_from_clip(open_sources(cello_set)[0], (p.cfg.video.height, p.cfg.video.width)))
    p.save(tmp_path / "w.safetensors")
    r = fps.run(presets=(), checkpoints=[str(tmp_path / "w.safetensors")], streams=(1,), frames=4, block=2,
                warmup=1, backends=("torch", "onnxruntime"), with_baseline=False, threads=1, gemm_n=256,
                gemm_repeats=1, progress=False, workdir=str(tmp_path / "fps"))
    name = "tiny+warp (w.safetensors)"
    assert {x["preset"] for x in r["results"]} == {name} and set(r["flops_per_frame"]) == {name}
    for x in r["results"]:
        assert set(x["stages_ms"]) == {"khp", "warp", "stu"}, x["backend"]  # no CVG network: the warp
        assert all(v["median_ms"] > 0 for v in x["stages_ms"].values())
