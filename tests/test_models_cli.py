"""`letsplay model info|init` (driven through ui.cmd_model's own parser)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from letsplay.models.cost import stage_costs
from letsplay.models.performer import Performer
from letsplay.models.presets import ABLATIONS, PRESETS, preset
from letsplay.models.skeleton import INSTRUMENTS
from letsplay.ui import cmd_model
from letsplay.ui.cli import main


def _run(argv: list[str]) -> int:
    (name, _help, add, run), = cmd_model.COMMANDS
    p = argparse.ArgumentParser(prog=f"letsplay {name}")
    add(p)
    return run(p.parse_args(argv))


def test_cli_choices_match_the_library() -> None:
    assert cmd_model.PRESET_NAMES == PRESETS
    assert cmd_model.ABLATION_NAMES == tuple(ABLATIONS)
    assert cmd_model.INSTRUMENT_NAMES == INSTRUMENTS


def test_info_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["info", "--preset", "tiny", "--measure", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/frame" in out and "total" in out and "fps" in out
    assert _run(["info", "--preset", "tiny", "--ablation", "no_gru", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "tiny+no_gru" and [s["name"] for s in info["stages"]] == ["khp", "cvg", "stu", "total"]
    assert info["stages"][-1]["params"] == sum(s["params"] for s in info["stages"][:-1])
    assert info["fps"] is None


def test_init_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.safetensors"
    assert _run(["init", "--preset", "tiny", "--instrument", "trombone", str(out)]) == 0
    assert Performer.load(out, preset="tiny").cfg.instrument == "trombone"
    capsys.readouterr()
    assert _run(["info", "--checkpoint", str(out)]) == 0
    assert "preset tiny (trombone)" in capsys.readouterr().out


def test_init_weights_from_a_trained_performer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``init --weights-from``: the preset built with the source's specs and instrument, every
    tensor of the source that fits taken over, what the preset adds (the cellist's pitch
    detector, missing from a performer made without it) left fresh and named."""
    import dataclasses

    import torch

    from letsplay.models.presets import ablate
    from letsplay.models.spec import VideoSpec

    torch.manual_seed(3)
    cfg = ablate(preset("tiny", "cello", video=VideoSpec(height=32, width=32, lookahead_ms=100.0)), "kp_no_fingering")
    src = Performer(cfg)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    src.save(tmp_path / "src.safetensors")
    out = tmp_path / "new.safetensors"
    assert _run(["init", "--preset", "tiny", "--weights-from", str(tmp_path / "src.safetensors"), str(out)]) == 0
    msg = capsys.readouterr().out
    new = Performer.load(out)
    assert new.cfg.video.lookahead_ms == 100.0 and new.cfg.instrument == "cello"
    assert new.khp.pitch is not None and dataclasses.replace(new.cfg.khp, pitch_detector=0) == cfg.khp
    theirs, mine = src.state_dict(), new.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    fresh = sorted(k for k in mine if k not in theirs)
    assert fresh and all(k.startswith("khp.pitch.") for k in fresh)
    assert f"{len(theirs)} tensors from" in msg and "khp.pitch" in msg

    # --lookahead: the same weights, heard at another lookahead (a sync-vs-lookahead curve's start)
    moved = tmp_path / "moved.safetensors"
    assert _run(["init", "--preset", "tiny", "--weights-from", str(out), "--lookahead", "33", str(moved)]) == 0
    m33 = Performer.load(moved)
    assert m33.cfg.video.lookahead_ms == 33.0 and m33.cfg.video.height == 32
    assert all(torch.equal(v, mine[k]) for k, v in m33.state_dict().items())
    plain, at0 = tmp_path / "plain.safetensors", tmp_path / "at0.safetensors"
    assert _run(["init", "--preset", "tiny", str(plain)]) == 0
    assert _run(["init", "--preset", "tiny", "--lookahead", "50", str(at0)]) == 0
    a, b = Performer.load(plain), Performer.load(at0)
    assert b.cfg.video.lookahead_ms == 50.0 and a.cfg.video.lookahead_ms != 50.0
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match="--lookahead must be"):
        _run(["init", "--preset", "tiny", "--lookahead", "-5", str(at0)])


def test_realtime_preset_fits_its_budget() -> None:
    """The real-time preset: 256x256 video within ~1 GFLOP per frame (see models/presets.py)."""
    cfg = preset("realtime")
    assert (cfg.video.height, cfg.video.width) == (256, 256)
    total = stage_costs(Performer(cfg))[-1]
    assert total.name == "total" and 0.5e9 < total.flops < 1.2e9


def test_combine_takes_each_stage_from_its_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stages trained in separate runs are put together: CVG from one file, the rest from
    the base; another config is refused with a message."""
    import torch

    from letsplay.models.performer import Performer

    torch.manual_seed(0)
    base, other = Performer(preset("tiny")), Performer(preset("tiny"))
    base.save(tmp_path / "base.safetensors")
    other.save(tmp_path / "cvg.safetensors")
    out = tmp_path / "both.safetensors"
    assert main(["model", "combine", str(tmp_path / "base.safetensors"), "--stage",
                 f"cvg={tmp_path / 'cvg.safetensors'}", "--out", str(out)]) == 0
    both = Performer.load(out)
    for name, want in (("khp", base), ("cvg", other), ("stu", base)):
        mine, theirs = getattr(both, name).state_dict(), getattr(want, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not torch.equal(both.cvg.state_dict()["lstm.weight_ih"], base.cvg.state_dict()["lstm.weight_ih"])
    Performer(preset("tiny", instrument="trombone")).save(tmp_path / "tb.safetensors")
    capsys.readouterr()
    assert main(["model", "combine", str(out), "--stage", f"cvg={tmp_path / 'tb.safetensors'}",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_combine_puts_a_retrained_khp_into_a_finished_performer(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A KHP retrained with its own settings and lookahead (here the paper's KP replaced by
    the streaming one, 100 ms ahead) goes into a performer whose CVG and STU stay; a KHP
    whose heatmaps the STU cannot read is refused."""
    import dataclasses

    import torch

    from letsplay.models.performer import Performer
    from letsplay.models.presets import ablate

    torch.manual_seed(0)
    old_cfg = ablate(preset("tiny"), "kp_paper")
    old = Performer(dataclasses.replace(old_cfg, preset="tiny"))
    old.save(tmp_path / "old.safetensors")
    new_cfg = preset("tiny")
    new = Performer(dataclasses.replace(new_cfg, video=dataclasses.replace(new_cfg.video, lookahead_ms=100.0)))
    new.save(tmp_path / "khp.safetensors")
    out = tmp_path / "both.safetensors"
    assert main(["model", "combine", str(tmp_path / "old.safetensors"), "--stage",
                 f"khp={tmp_path / 'khp.safetensors'}", "--out", str(out), "--fp16"]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:  # stored in half precision, as the shipped performers are
        assert f.get_tensor("khp.fc.weight").dtype == torch.float16
    both = Performer.load(out)
    assert both.cfg.khp == new.cfg.khp and both.cfg.video.lookahead_ms == 100.0
    assert both.cfg.cvg == old.cfg.cvg and both.cfg.stu == old.cfg.stu
    for name, want in (("khp", new), ("cvg", old), ("stu", old)):
        mine, theirs = getattr(both, name).state_dict(), getattr(want, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k].half().float()) for k in mine)
    other_hm = preset("tiny")
    Performer(dataclasses.replace(other_hm, khp=dataclasses.replace(other_hm.khp, heatmap="sum"))).save(
        tmp_path / "sum.safetensors")
    capsys.readouterr()
    assert main(["model", "combine", str(tmp_path / "old.safetensors"), "--stage",
                 f"khp={tmp_path / 'sum.safetensors'}", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "heatmaps the base's STU reads" in capsys.readouterr().err
