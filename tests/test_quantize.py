"""Reduced-precision variants of the fused graph (int8 QDQ, fp16): made, measured against
fp32 on real frames, recorded in the manifest, run through OrtBackend; clear errors for
variants that are not there."""

import json
import math
import shutil

import numpy as np
import pytest
from helpers import music_signal

from letsplay.export.onnx import ManifestError, export_onnx, read_manifest, sha256_file
from letsplay.export.quantize import add_variants, psnr
from letsplay.models.features import windows_from_audio
from letsplay.models.stepping import feeds, next_state, state_out_name
from letsplay.realtime.backends import BackendError, OrtBackend, describe

N_EVAL = 30
N_CALIB = 60


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def tiny(performer, tiny_ckpt):
    return performer, tiny_ckpt


@pytest.fixture(scope="module")
def windows(tiny):
    p = tiny[0]
    x = music_signal((N_CALIB + N_EVAL) / 30 + 0.5, seed=21)
    w = windows_from_audio(x, p.cfg.audio, p.cfg.video, N_CALIB + N_EVAL)
    assert w.shape == (N_CALIB + N_EVAL, 84, 87)
    return w


@pytest.fixture(scope="module")
def variants(tiny, windows, tmp_path_factory):
    p, ckpt = tiny
    out = tmp_path_factory.mktemp("export")
    export_onnx(p, out, checkpoint_sha256=sha256_file(ckpt), stages=False, cqt=False, pipeline=False)
    reports = add_variants(out, windows[:N_CALIB], windows[N_CALIB:], ["int8", "fp16"], min_psnr=None,
                           source="test music")
    return out, reports


def _run(b: OrtBackend, windows: np.ndarray) -> list[dict[str, np.ndarray]]:
    st = b.init_state(1)
    outs = []
    for w in windows:
        o = b.step(feeds({"window": w[None]}, st))
        st = next_state(o, st)
        outs.append(o)
    return outs


def test_variants_are_written_and_listed(variants):
    out, reports = variants
    m = read_manifest(out)  # digests of the variants verified too
    assert m.precisions() == ["fp32", "int8", "fp16"]
    for p in ("int8", "fp16"):
        v = m.variants[p]
        assert v["file"] == f"performer.{p}.onnx" and (out / v["file"]).is_file()
        assert v["sha256"] == sha256_file(out / v["file"]) and v["graph"] == "performer" and v["precision"] == p
        q = v["quality"]
        assert q["frames"] == N_EVAL and q["psnr_db"] == reports[p]["psnr_db"]
        assert q["keypoints_max_abs"] == reports[p]["keypoints_max_abs"]
        assert reports[p]["recorded"]
    assert m.variants["int8"]["calibration"]["frames"] == N_CALIB
    assert m.variants["int8"]["settings"]["quantized_nodes"] > 0
    assert "calibration" not in m.variants["fp16"]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_variant_runs_through_ort_backend(variants, windows, precision):
    out, _ = variants
    b = OrtBackend(out, precision=precision, threads=1)
    assert b.precision == precision and describe(b).endswith(f"({precision})")
    for o in _run(b, windows[N_CALIB:]):
        assert o["frame"].shape == (1, 3, 32, 32) and o["keypoints"].shape == (1, 67, 2)
        assert all(np.isfinite(v).all() for v in o.values())
        for k, v in b.init_state(1).items():
            assert o[state_out_name(k)].shape == v.shape


def test_report_psnr_is_from_the_real_frames(variants, windows):
    """The report's PSNR equals the PSNR of the frames the backends really produce,
    free-running over the same windows; fp16 stays close to fp32."""
    out, reports = variants
    ref = _run(OrtBackend(out, threads=1), windows[N_CALIB:])
    for p in ("int8", "fp16"):
        got = _run(OrtBackend(out, precision=p, threads=1), windows[N_CALIB:])
        mse = np.mean([np.mean((a["frame"].astype(np.float64) - b["frame"]) ** 2)
                       for a, b in zip(ref, got, strict=True)])
        kp = max(float(np.abs(a["keypoints"] - b["keypoints"]).max()) for a, b in zip(ref, got, strict=True))
        r = reports[p]
        assert math.isfinite(r["psnr_db"]) and math.isfinite(r["psnr_min_db"]) and r["psnr_min_db"] <= r["psnr_db"]
        assert r["psnr_db"] == pytest.approx(psnr(mse), abs=1e-6)
        assert r["keypoints_max_abs"] == pytest.approx(kp, abs=1e-7)
        assert r["step_ms"]["fp32"] > 0 and r["step_ms"]["variant"] > 0
    assert reports["fp16"]["psnr_db"] > 30


def test_missing_or_unlisted_variant_is_a_clear_error(variants, tmp_path):
    out, _ = variants
    bad = tmp_path / "gone"
    shutil.copytree(out, bad)
    (bad / "performer.int8.onnx").unlink()
    with pytest.raises(ManifestError, match=r"int8 variant performer\.int8\.onnx listed in the manifest is missing"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match="int8 variant"):
        OrtBackend(bad)
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    man = json.loads((plain / "manifest.json").read_text())
    del man["variants"]["fp16"]
    (plain / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BackendError, match=r"no fp16 variant.*lists fp32, int8.*--fp16"):
        OrtBackend(plain, precision="fp16")
    with pytest.raises(BackendError, match="unknown precision"):
        OrtBackend(plain, precision="int4")
    for edit in (lambda v: v["int8"].update(file="../performer.onnx"),
                 lambda v: v["int8"].update(file="performer.onnx"),  # the fp32 graph's file
                 lambda v: v["int8"].update(precision="fp16"), lambda v: v["int8"].update(graph=[1]),
                 lambda v: v.update(bf8={"file": "x"})):
        m = json.loads(json.dumps(man))
        edit(m["variants"])
        (plain / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ManifestError, match="variant"):
            read_manifest(plain)


def test_a_variant_under_the_threshold_is_not_recorded(tiny, windows, tmp_path):
    p, _ = tiny
    export_onnx(p, tmp_path, stages=False, cqt=False, pipeline=False)
    r = add_variants(tmp_path, windows[:8], windows[:8], ["fp16"], min_psnr=1000.0)["fp16"]
    assert not r["recorded"] and r["file"] is None and math.isfinite(r["psnr_db"])
    assert not (tmp_path / "performer.fp16.onnx").exists()
    assert read_manifest(tmp_path).precisions() == ["fp32"]


def test_cli_export_reports_variants(tiny, tmp_path, capsys, monkeypatch):
    from letsplay.ui.cli import main

    _, ckpt = tiny
    out = tmp_path / "exp"
    rc = main(["export", "onnx", "--checkpoint", str(ckpt), "--out", str(out), "--no-stages", "--fp16",
               "--eval-frames", "20", "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "fp16: PSNR" in text and "dB" in text and "ms vs fp32" in text and "--precision fp16" in text
    assert read_manifest(out).precisions() == ["fp32", "fp16"]


def test_open_backend_picks_the_variant(variants, tiny):
    from letsplay.realtime.backends import BackendOptions, open_backend
    from letsplay.realtime.performers import resolve_performer

    out, _ = variants
    b = open_backend(resolve_performer(str(out)), BackendOptions(backend="auto", precision="int8", threads=1))
    assert isinstance(b, OrtBackend) and b.precision == "int8" and b.device == "CPUExecutionProvider"
    with pytest.raises(BackendError, match="use --backend onnxruntime"):
        open_backend(resolve_performer(str(out)), BackendOptions(backend="torch", precision="fp16"))
    with pytest.raises(BackendError, match="variant of an exported folder.*--int8"):
        open_backend(resolve_performer(str(tiny[1])), BackendOptions(backend="onnxruntime", precision="int8"))
