"""`letsplay train` through the real CLI entry point: a run folder is never destroyed
(a folder holding a run needs --resume or --overwrite; other folders are refused), bad
settings are refused in one line before any work, the instrument defaults to the
dataset's, and every option's help says what it means and its default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from letsplay.ui.cli import build_parser, main

TINY = ["--preset", "tiny", "--stage", "kp", "--batch", "1", "--seq-len", "3", "--ckpt-every", "1",
        "--log-every", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def dataset(trombone_set: Path) -> Path:
    return trombone_set


@pytest.fixture(scope="module")
def finished(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step kp run, trained without --instrument (so: the dataset's trombone)."""
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "--data", str(dataset), "--out", str(run), "--steps", "2", *TINY]) == 0
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(dataset: Path, out: Path, *extra: str, steps: int = 2) -> int:
    return main(["train", "--data", str(dataset), "--out", str(out), "--steps", str(steps), *TINY, *extra])


def test_instrument_defaults_to_the_datasets(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = json.loads((finished / "train_config.json").read_text())
    assert cfg["model"]["instrument"] == "trombone"
    from letsplay.models.performer import Performer

    assert Performer.load(finished / "performer.safetensors").cfg.instrument == "trombone"
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


def test_training_into_a_finished_run_is_refused(dataset: Path, finished: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    capsys.readouterr()
    assert _train(dataset, finished, "--seed", "3") == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(finished) == before  # performer.safetensors, metrics, checkpoints: byte for byte


def test_resume_with_other_settings_names_the_differences(dataset: Path, finished: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    capsys.readouterr()
    assert _train(dataset, finished, "--resume", "--seed", "3", steps=4) == 2
    err = capsys.readouterr().err
    assert "other training settings" in err and "steps: run 2, now 4" in err and "seed: run 0, now 3" in err
    assert _snapshot(finished) == before


def test_resume_of_a_finished_run_with_its_settings_changes_nothing(dataset: Path, finished: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    assert _train(dataset, finished, "--resume") == 0
    assert "2 steps" in capsys.readouterr().out
    after = _snapshot(finished)
    assert after["performer.safetensors"] == before["performer.safetensors"]
    assert after["metrics.jsonl"] == before["metrics.jsonl"]
    assert {k for k in after if k.startswith("checkpoints")} == {k for k in before if k.startswith("checkpoints")}


def test_resume_continues_a_partial_run(dataset: Path, tmp_path: Path) -> None:
    """A run stopped at step 2 of 4 (as by an interruption) continues with --resume and its
    own options."""
    from letsplay.models.presets import preset
    from letsplay.models.train import TrainConfig, Trainer

    run = tmp_path / "part"
    cfg = TrainConfig(stage="kp", steps=4, batch=1, seq_len=3, ckpt_every=1, log_every=1)
    Trainer(preset("tiny", "trombone"), cfg, dataset, run, device="cpu", progress=False).run(stop_at=2)
    assert _train(dataset, run, "--resume", steps=4) == 0
    log = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_overwrite_starts_over_and_keeps_other_files(dataset: Path, finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "again"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")
    old = (run / "performer.safetensors").read_bytes()
    assert _train(dataset, run, "--overwrite", "--seed", "5", steps=1) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001"]  # step 2's is gone
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((run / "train_config.json").read_text())["train"]["seed"] == 5
    assert (run / "performer.safetensors").read_bytes() != old


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(dataset: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "performer.safetensors").write_bytes(b"not mine to delete")
    for flag in ("--overwrite", "--resume"):
        assert _train(dataset, other, flag) == 2
        assert "holds no letsplay training run" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["performer.safetensors"]
    assert (other / "performer.safetensors").read_bytes() == b"not mine to delete"


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--threads", "-3"], "--threads must be >= 1, got -3"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "-5"], "--steps must be >= 1, got -5"),
    (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be >= 1, got 0"),
    (["--instrument", "cello"], "holds no training clips of 'cello', only of trombone"),
    (["--resume", "--overwrite"], "choose one"),
    (["--fractions", "0", "0", "0"], "--fractions"),
    (["--teacher-keypoints", "1.5"], "--teacher-keypoints"),
    (["--teacher-motion", "-0.1"], "--teacher-motion"),
])
def test_invalid_settings_are_refused_before_any_work(dataset: Path, tmp_path: Path, extra: list[str],
                                                      fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(dataset, out, *extra) == 2  # later options win over TINY's
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.startswith("letsplay train: error:") and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_dataset_of_several_instruments_needs_instrument(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import cv2
    import soundfile as sf

    root = tmp_path / "suburmp"  # a Sub-URMP tree with a cello and a trombone recording
    for inst in ("cello", "trombone"):
        for k in range(2):
            img = root / "img" / "train" / inst / f"{inst}01_{k}.jpg"
            wav = root / "chunk" / "train" / inst / f"{inst}01_{k}.wav"
            img.parent.mkdir(parents=True, exist_ok=True)
            wav.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
            sf.write(str(wav), np.zeros(11025, np.float32), 22050)
    out = tmp_path / "run"
    assert _train(root, out) == 2
    err = capsys.readouterr().err
    assert "several instruments (cello, trombone)" in err and "--instrument" in err
    assert not out.exists()


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.dest != "help"]


def _subparser(p: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


@pytest.mark.parametrize("path", [("train",), ("model", "info"), ("model", "init"), ("model", "combine")])
def test_every_option_says_what_it_is_and_its_default(path: tuple[str, ...]) -> None:
    p = _subparser(build_parser(), *path)
    for a in _options(p):
        assert a.help and len(a.help) > 15, f"{path} {a.option_strings}: no help"
        has_default = a.default not in (None, False) and not a.required
        if has_default:
            assert "default" in a.help, f"{path} {a.option_strings}: help does not state the default {a.default!r}"
        if a.choices and len(a.choices) <= 5 and a.dest in ("preset", "stage"):
            assert all(str(c) in a.help for c in a.choices), f"{path} {a.option_strings}: choices not explained"
    if path == ("train",):
        helps = {a.dest: a.help for a in _options(p)}
        assert "dataset's instrument" in helps["instrument"]
        assert "default 0" in helps["seed"]


def test_onset_stage_then_kp_with_the_detector_kept(dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`train --stage onset` trains the KHP's onset detector; `train --stage kp --init RUN
    --freeze-onset` keeps it while the rest trains; a model without one is refused in a line."""
    from letsplay.models.performer import Performer

    onset = tmp_path / "onset"
    base = ["--preset", "tiny", "--batch", "1", "--log-every", "1", "--threads", "1"]
    assert main(["train", "--data", str(dataset), "--out", str(onset), "--steps", "2", "--stage", "onset",
                 "--seq-len", "20", *base]) == 0
    kp = tmp_path / "kp"
    assert main(["train", "--data", str(dataset), "--out", str(kp), "--steps", "2", "--stage", "kp",
                 "--seq-len", "3", "--init", str(onset / "performer.safetensors"), "--freeze-onset", *base]) == 0
    assert "from performer.safetensors" in capsys.readouterr().out
    a = Performer.load(onset / "performer.safetensors").khp
    b = Performer.load(kp / "performer.safetensors").khp
    for (name, p), q in zip(a.onset.named_parameters(), b.onset.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy()), name
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "x"), "--steps", "1", "--stage", "onset",
                 "--seq-len", "20", "--ablation", "kp_no_motion", *base]) == 2
    assert "onset detector" in capsys.readouterr().err


def test_lookahead_beside_init_must_be_the_checkpoints(dataset: Path, finished: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--init keeps the checkpoint's lookahead; a different --lookahead beside it is refused
    in one line instead of being silently ignored."""
    ck = str(finished / "performer.safetensors")
    assert _train(dataset, tmp_path / "x", "--init", ck, "--lookahead", "100") == 2
    assert "hears 0 ms ahead" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert _train(dataset, tmp_path / "y", "--init", ck, "--lookahead", "0") == 0
