"""Performer checkpoints: exact round trip, and clear refusals of files that do not fit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from letsplay.models.performer import CheckpointError, Performer, PerformerConfig, _digest
from letsplay.models.presets import ablate, preset
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.models.state import ConfigError


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Performer, Path]:
    torch.manual_seed(0)
    model = Performer(preset("tiny", instrument="trombone"))
    with torch.no_grad():
        model.khp.fc.weight.normal_(std=0.01)  # non-trivial keypoints
        model.khp.set_mean_pose(torch.rand(67, 2))  # a "dataset mean" travels with the file
    path = tmp_path / "tiny.safetensors"
    model.save(path)
    return model, path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def test_round_trip_is_exact(saved: tuple[Performer, Path]) -> None:
    model, path = saved
    loaded = Performer.load(path, audio=AudioSpec(), video=VideoSpec(height=32, width=32), preset="tiny")
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    w = torch.rand(2, 3, 84, 87)
    with torch.no_grad():
        assert torch.equal(model(w)[0].frame, loaded(w)[0].frame)
    _, meta = _read(path)
    assert meta["preset"] == "tiny" and meta["format_version"] == "1"
    assert AudioSpec.from_json(meta["audio_spec"]) == AudioSpec()
    assert PerformerConfig.from_json(meta["config"]) == model.cfg


def test_fp16_file_loads_as_fp32_with_rounded_weights(saved: tuple[Performer, Path], tmp_path: Path) -> None:
    model, path = saved
    half = tmp_path / "half.safetensors"
    model.save(half, dtype=torch.float16)
    tensors, _ = _read(half)
    sd = model.state_dict()
    assert all(t.dtype == (torch.float16 if sd[k].is_floating_point() else sd[k].dtype) for k, t in tensors.items())
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded = Performer.load(half)
    for k, v in loaded.state_dict().items():
        assert v.dtype == sd[k].dtype
        want = sd[k].to(torch.float16).to(sd[k].dtype) if v.is_floating_point() else sd[k]
        assert torch.equal(v, want)
    tensors["khp.fc.weight"] = tensors["khp.fc.weight"] + 1  # still guarded by the digest
    with safe_open(str(half), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(half), metadata=meta)
    with pytest.raises(CheckpointError, match="digest"):
        Performer.load(half)


def test_round_trip_ablation(tmp_path: Path) -> None:
    model = Performer(ablate(preset("tiny"), "no_cvg"))
    model.save(tmp_path / "m.safetensors")
    assert Performer.load(tmp_path / "m.safetensors").cfg == model.cfg


def test_config_json_round_trip() -> None:
    for name in ("tiny", "realtime", "paper"):
        cfg = preset(name)
        assert PerformerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        PerformerConfig.from_dict({**preset("tiny").to_dict(), "bogus": 1})
    d = preset("tiny").to_dict()
    d["stu"]["depth"] = "two"
    with pytest.raises(ConfigError, match="stu.depth"):
        PerformerConfig.from_dict(d)


def test_mismatched_expectations(saved: tuple[Performer, Path]) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match="preset 'tiny', expected 'realtime'"):
        Performer.load(path, preset="realtime")
    with pytest.raises(CheckpointError, match="AudioSpec"):
        Performer.load(path, audio=AudioSpec(alignment="centered"))
    with pytest.raises(CheckpointError, match="VideoSpec"):
        Performer.load(path, video=VideoSpec())


def test_missing_truncated_and_foreign_files(saved: tuple[Performer, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        Performer.load(tmp_path / "nope.safetensors")
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            Performer.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a letsplay Performer checkpoint"):
        Performer.load(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_hand_edited_metadata_is_refused(saved: tuple[Performer, Path], tmp_path: Path) -> None:
    _, path = saved
    tensors, meta = _read(path)
    cfg = json.loads(meta["config"])
    cfg["khp"]["heatmap_radius"] = 3.0  # shapes still fit: only the digest can tell
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="SHA-256"):
        Performer.load(edited)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={**meta, "config": meta["config"][:-5]})
    with pytest.raises(CheckpointError, match="SHA-256"):
        Performer.load(broken)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, "format_version": "0"})
    with pytest.raises(CheckpointError, match="format version"):
        Performer.load(old)


def test_hand_edited_tensors_are_refused(saved: tuple[Performer, Path], tmp_path: Path) -> None:
    _, path = saved
    tensors, meta = _read(path)
    name = "stu.head.weight"
    t = dict(tensors)
    t[name] = torch.zeros(t[name].shape[0] + 1, *t[name].shape[1:])
    edited = tmp_path / "shape.safetensors"
    save_file(t, str(edited), metadata=meta)
    with pytest.raises(CheckpointError, match="SHA-256"):
        Performer.load(edited)
    # even with a recomputed digest (another writer), shapes must fit the config
    meta2 = {k: v for k, v in meta.items() if k != "sha256"}
    meta2["sha256"] = _digest(meta2, t)
    save_file(t, str(edited), metadata=meta2)
    with pytest.raises(CheckpointError, match=rf"{name} is \(4, 8, 3, 3\) but the config needs \(3, 8, 3, 3\)"):
        Performer.load(edited)
    # a value edit (same shapes) is caught by the digest
    t = dict(tensors)
    t[name] = t[name] + 1
    save_file(t, str(edited), metadata=meta)
    with pytest.raises(CheckpointError, match="SHA-256"):
        Performer.load(edited)
    # a missing tensor, digest recomputed
    t = {k: v for k, v in tensors.items() if k != name}
    meta2["sha256"] = _digest(meta2, t)
    save_file(t, str(edited), metadata=meta2)
    with pytest.raises(CheckpointError, match="missing"):
        Performer.load(edited)


def test_save_has_no_pickle(saved: tuple[Performer, Path]) -> None:
    _, path = saved
    head = path.read_bytes()[:16]
    assert not head.startswith(b"PK") and not head.startswith(b"\x80")  # not a zip/pickle
    assert dataclasses.is_dataclass(PerformerConfig)
