"""Synthetic datasets: the format on disk, resuming, refusing to mix datasets, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.readers import open_dataset
from letsplay.models.data.synth_dataset import SynthDatasetConfig, plan_dataset, synthesize_dataset
from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.ui.cli import main

TINY = dict(minutes=0.2, clip_seconds=6.0, identities=2, synth="tinysoundfont")


@pytest.fixture(scope="module")
def cello_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "cello"
    synthesize_dataset(root, SynthDatasetConfig("cello", seed=1, **TINY), workers=1)
    return root


def test_layout_and_contents(cello_ds: Path) -> None:
    m = fmt.load_manifest(cello_ds)
    assert m["format"] == "letsplay-dataset" and m["format_version"] == fmt.FORMAT_VERSION
    assert m["kind"] == "synthetic" and m["instrument"] == "cello" and m["complete"] is True
    assert AudioSpec.from_dict(m["audio_spec"]) == AudioSpec() and VideoSpec.from_dict(m["video_spec"]) == VideoSpec()
    assert m["config"]["synth"] == "tinysoundfont" and m["config"]["renderer_version"] >= 1
    assert sum(c["duration"] for c in m["clips"]) == pytest.approx(12.0, abs=0.05)
    clips = open_dataset(cello_ds)
    assert len(clips) == len(m["clips"]) >= 2
    for c in clips:
        meta = c.meta
        assert meta["split"] in fmt.SPLITS and isinstance(meta["identity_seed"], int)
        assert meta["score"]["source"].startswith(("music21:", "random:"))
        T = c.n_frames
        assert T == round(meta["duration"] * 30)
        times, kp, conf = fmt.read_keypoints(c.files.keypoints)
        assert kp.shape == (T, 67, 2) and conf.shape == (T, 67) and np.allclose(times, np.arange(T) / 30)
        assert kp.min() >= 0 and kp.max() <= 1 and np.all(conf == 1)
        audio = c.audio(AudioSpec())
        assert audio.dtype == np.float32 and len(audio) == round(T / 30 * 44100)
        assert np.abs(audio).max() > 0.01
        frames = c.frames(T - 3, 3)
        assert frames.shape == (3, 256, 256, 3) and frames.dtype == np.uint8
        assert c.notes() and set(c.motion()) >= {"bow_position", "string", "stop_fraction"}
    # random access is exact: a window read alone equals the same frames read in a longer run
    c = clips[0]
    assert np.array_equal(c.frames(40, 2), c.frames(35, 10)[5:7])


def test_rendered_frames_show_the_keypoints(cello_ds: Path) -> None:
    # the figure is drawn from the keypoints: hand points sit on skin-coloured pixels
    from letsplay.models.data.performer_render import Look

    for c in open_dataset(cello_ds):
        kp, _ = c.keypoints()
        skin = np.array(Look.from_seed(c.meta["identity_seed"]).skin)
        close = []
        for i in (5, 50, 100):
            f = c.frames(i, 1)[0].astype(int)
            xy = np.clip(np.round(kp[i] * 256 - 0.5).astype(int), 0, 255)
            close += [np.abs(f[y, x] - skin).sum() < 120 for x, y in xy[25:]]
        assert np.mean(close) > 0.6


def test_resume_skips_complete_clips_and_refuses_other_datasets(cello_ds: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(cello_ds, root)
    m = fmt.load_manifest(root)
    first, second = m["clips"][0]["id"], m["clips"][1]["id"]
    shutil.rmtree(fmt.clip_dir(root, second))  # as if interrupted before this clip
    (root / "clips" / f".tmp-{second}-junk").mkdir()  # a half-written clip
    kept = fmt.clip_dir(root, first) / "video.mp4"
    before = kept.stat().st_mtime_ns
    seen = []
    out = synthesize_dataset(root, SynthDatasetConfig("cello", seed=1, **TINY), workers=1,
                             progress=lambda d, t, s: seen.append((d, t)))
    assert out["complete"] and fmt.clip_complete(root, second)
    assert kept.stat().st_mtime_ns == before  # the complete clip was not rendered again
    assert seen[0] == (len(m["clips"]) - 1, len(m["clips"]))
    assert not list((root / "clips").glob(".tmp-*"))
    # the re-rendered clip is identical to the original (deterministic in the config)
    a = fmt.read_keypoints(fmt.clip_dir(root, second) / "keypoints.npz")[1]
    b = fmt.read_keypoints(fmt.clip_dir(cello_ds, second) / "keypoints.npz")[1]
    assert np.array_equal(a, b)
    with fmt.dataset_lock(root):  # another run is writing this folder right now
        with pytest.raises(fmt.DatasetError, match="being written"):
            synthesize_dataset(root, SynthDatasetConfig("cello", seed=1, **TINY), workers=1)
    with pytest.raises(fmt.DatasetError, match="different dataset"):
        synthesize_dataset(root, SynthDatasetConfig("cello", seed=2, **TINY), workers=1)
    with pytest.raises(fmt.DatasetError, match="different dataset"):
        synthesize_dataset(root, SynthDatasetConfig("trombone", seed=1, **TINY), workers=1)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(fmt.DatasetError, match="not empty"):
        synthesize_dataset(junk, SynthDatasetConfig("cello", **TINY), workers=1)


def test_splits_go_by_piece(tmp_path: Path) -> None:
    cfg = SynthDatasetConfig("trombone", minutes=10.0, seed=3, synth="tinysoundfont").resolved()
    clips = plan_dataset(tmp_path, cfg)
    assert sum(c["duration"] for c in clips) == pytest.approx(600.0, abs=5.0)
    split_of: dict[str, set[str]] = {}
    for c in clips:
        split_of.setdefault(c["piece"], set()).add(c["split"])
    assert all(len(s) == 1 for s in split_of.values())  # a piece never straddles two splits
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}
    assert len({c["identity_seed"] for c in clips}) == cfg.identities
    assert plan_dataset(tmp_path, cfg) == clips  # deterministic (and the scores are cached on disk)


def test_a_bigger_set_keeps_a_smaller_ones_held_out_pieces_held_out(tmp_path: Path) -> None:
    small = tmp_path / "small"
    assert main(["data", "synth", "--instrument", "trombone", "--minutes", "0.3", "--clip-seconds", "6",
                 "--split", "test", "--out", str(small), "--workers", "2", "--synth", "tinysoundfont",
                 "--frames", "jpeg", "--seed", "3"]) == 0
    held = {c["piece"] for c in fmt.load_manifest(small)["clips"]}
    big = dict(instrument="trombone", minutes=10.0, seed=3, synth="tinysoundfont")
    seeded = plan_dataset(tmp_path / "a", SynthDatasetConfig(**big).resolved())
    kept = plan_dataset(tmp_path / "b", SynthDatasetConfig(**big, keep_splits=str(small)).resolved())
    assert held <= {c["piece"] for c in seeded}  # the bigger set plays the smaller one's pieces too ...
    assert any(c["split"] != "test" for c in seeded if c["piece"] in held)  # ... seeded, some would be trained on
    assert all(c["split"] == "test" for c in kept if c["piece"] in held)
    assert [c for c in kept if c["piece"] not in held] == [c for c in seeded if c["piece"] not in held]
    with pytest.raises(ValueError, match="not a letsplay dataset"):
        SynthDatasetConfig(**big, keep_splits=str(tmp_path / "nowhere")).validate()


def test_cli_synth_info_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tb"
    rc = main(["data", "synth", "--instrument", "trombone", "--minutes", "0.15", "--clip-seconds", "4.5",
               "--out", str(out), "--workers", "2", "--synth", "tinysoundfont", "--frames", "jpeg", "--seed", "4"])
    assert rc == 0
    assert "clips" in capsys.readouterr().out
    clips = open_dataset(out)
    assert clips and all(c.meta["frames"] == "jpeg" for c in clips)
    assert (fmt.clip_dir(out, clips[0].id) / "frames" / "000000.jpg").is_file()
    assert clips[0].frames(0, 2).shape == (2, 256, 256, 3)
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["instrument"] == "trombone"
    png = tmp_path / "grid.png"
    assert main(["data", "preview", str(out), "--out", str(png), "-n", "2", "--cols", "2"]) == 0
    import cv2

    img = cv2.imread(str(png))
    assert img.shape == (512, 512, 3)
    # a second run of the same command has nothing left to do; a different one is refused
    assert main(["data", "synth", "--instrument", "trombone", "--minutes", "0.15", "--clip-seconds", "4.5",
                 "--out", str(out), "--workers", "1", "--synth", "tinysoundfont", "--frames", "jpeg",
                 "--seed", "4"]) == 0
    capsys.readouterr()
    assert main(["data", "synth", "--instrument", "cello", "--minutes", "0.15", "--out", str(out)]) == 2
    assert "different dataset" in capsys.readouterr().err
    assert os.path.isfile(out / "manifest.json")


# --------------------------------------------------------------------------- datasets from your own scores

SMALL = VideoSpec(width=32, height=32)


def _midi(path: Path, notes: list[tuple[float, float, int, int]], name: str = "Cello", program: int = 42) -> Path:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=100)
    track = pretty_midi.Instrument(program, name=name)
    track.notes = [pretty_midi.Note(v, p, s, e) for s, e, p, v in notes]
    pm.instruments.append(track)
    pm.write(str(path))
    return path


def _musicxml(path: Path, parts: dict[str, list[str]], qpm: float = 120.0) -> Path:
    from music21 import meter, note, stream, tempo

    sc = stream.Score()
    for name, pitches in parts.items():
        p = stream.Part()
        p.partName = name
        p.append(meter.TimeSignature("4/4"))
        p.append(tempo.MetronomeMark(number=qpm))
        for x in pitches:
            p.append(note.Rest(quarterLength=1.0) if x == "r" else note.Note(x, quarterLength=1.0))
        sc.insert(0, p)
    sc.write("musicxml", str(path))
    return path


def test_dataset_of_given_scores(tmp_path: Path) -> None:
    import hashlib

    from letsplay.models.data.scores import file_score

    mid = _midi(tmp_path / "etude.mid", [(0.5 + 0.4 * i, 0.85 + 0.4 * i, 45 + i, 50 + 8 * i) for i in range(7)])
    xml = _musicxml(tmp_path / "duo.musicxml", {"Violin": ["E5", "F5", "G5", "A5", "B5", "C6"],
                                                "Violoncello": ["C3", "D3", "r", "E3", "F3", "G3"]})
    cfg = SynthDatasetConfig("cello", score_files=(str(mid), str(xml)), identity=777, clip_seconds=1.5,
                             min_clip_seconds=1.0, synth="tinysoundfont")
    root = tmp_path / "gt"
    m = synthesize_dataset(root, cfg, workers=1, video_spec=SMALL)
    assert m["complete"]
    c = m["config"]
    assert c["score_files"] == [str(mid), str(xml)] and c["minutes"] is None
    assert c["score_sha256"] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in (mid, xml)]
    assert c["part"] is None and c["identity"] == 777 and c["identities"] == 1 and c["split"] == "test"
    # exactly the given pieces (the cello part of the duet), whole, in clips that follow each other
    want = {sc.source: sc for sc in (file_score(mid, "cello"), file_score(xml, "cello"))}
    assert set(want) == {"file:etude.mid#Cello", "file:duo.musicxml#Violoncello"}
    clips = open_dataset(root)
    assert {cl.meta["score"]["piece"] for cl in clips} == set(want)
    for pid, sc in want.items():
        mine = sorted((cl.meta for cl in clips if cl.meta["score"]["piece"] == pid), key=lambda x: x["score"]["start"])
        assert len(mine) >= 2
        assert sum(x["duration"] for x in mine) == pytest.approx(sc.duration, abs=1 / 30)
        ends = [x["score"]["start"] + x["duration"] for x in mine]
        assert [x["score"]["start"] for x in mine[1:]] == pytest.approx(ends[:-1])
        assert sum(x["score"]["n_notes"] for x in mine) == len(sc.notes)  # every note, once
    for cl in clips:
        meta = json.loads((fmt.clip_dir(root, cl.id) / "clip.json").read_text())
        assert meta["identity_seed"] == 777 and meta["split"] == "test"
        assert meta["score"]["source"] == meta["score"]["piece"]
    # the same request resumes (nothing left to do); another identity or a changed file is refused
    first = fmt.clip_dir(root, clips[0].id) / "clip.json"
    before = first.stat().st_mtime_ns
    assert synthesize_dataset(root, cfg, workers=1, video_spec=SMALL)["complete"]
    assert first.stat().st_mtime_ns == before
    other = SynthDatasetConfig(**{**cfg.__dict__, "identity": 778})
    with pytest.raises(fmt.DatasetError, match="different dataset"):
        synthesize_dataset(root, other, workers=1, video_spec=SMALL)
    _musicxml(xml, {"Violin": ["E5"], "Violoncello": ["C3", "D3", "E3"]})
    with pytest.raises(fmt.DatasetError, match="score_sha256"):
        synthesize_dataset(root, cfg, workers=1, video_spec=SMALL)


def test_identity_and_split_for_corpus_datasets(tmp_path: Path) -> None:
    cfg = SynthDatasetConfig("trombone", minutes=1.5, seed=3, identity=4242, split="train",
                             synth="tinysoundfont").resolved()
    clips = plan_dataset(tmp_path, cfg)
    assert len({c["piece"] for c in clips}) >= 2
    assert {c["identity_seed"] for c in clips} == {4242} and {c["split"] for c in clips} == {"train"}


def test_cli_synth_score_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xml = _musicxml(tmp_path / "duo.musicxml", {"Violin": ["E5", "F5"], "Violoncello": ["C3", "D3"]})
    out = tmp_path / "violin"
    cmd = ["data", "synth", "--instrument", "cello", "--score", str(xml), "--part", "violin", "--identity", "5",
           "--split", "val", "--out", str(out), "--workers", "1", "--synth", "tinysoundfont"]
    assert main(cmd) == 0
    assert "1 clips, val" in capsys.readouterr().out
    (clip,) = open_dataset(out)
    assert clip.meta["score"]["source"] == "file:duo.musicxml#Violin"
    assert clip.meta["identity_seed"] == 5 and clip.meta["split"] == "val"
    assert clip.n_frames == 30  # two quarter notes at 120 qpm
    assert fmt.load_manifest(out)["config"]["part"] == "violin"
    assert main(cmd) == 0  # resumes: nothing to do
    capsys.readouterr()
    cmd[cmd.index("violin")] = "Violoncello"
    assert main(cmd) == 2
    assert "different dataset" in capsys.readouterr().err


BASE = ["data", "synth", "--instrument", "cello", "--synth", "tinysoundfont"]
BAD_REQUESTS = [
    (["--minutes", "1", "--identities", "0"], "--identities must be >= 1"),
    (["--minutes", "-1"], "--minutes must be a number > 0"),
    (["--minutes", "0"], "--minutes must be a number > 0"),
    (["--minutes", "nan"], "--minutes must be a number > 0"),
    (["--minutes", "inf"], "--minutes must be a number > 0"),
    (["--minutes", "1", "--clip-seconds", "-5"], "--clip-seconds must be a number > 0"),
    (["--minutes", "1", "--clip-seconds", "0"], "--clip-seconds must be a number > 0"),
    (["--minutes", "1", "--clip-seconds", "nan"], "--clip-seconds must be a number > 0"),
    (["--minutes", "1", "--workers", "0"], "--workers must be >= 1"),
    (["--minutes", "1", "--workers", "-2"], "--workers must be >= 1"),
    (["--minutes", "1", "--out", "{file}"], "is a file, not a folder"),
    ([], "--minutes M (corpus pieces and random melodies) or --score FILE"),
    (["--score", "{tune}", "--minutes", "1"], "--minutes and --score exclude each other"),
    (["--score", "{tune}", "{dir}/missing.mid"], "missing.mid' does not exist"),
    (["--score", "{dir}/silent.mid"], "holds no notes"),
    (["--score", "{dir}/rests.musicxml"], "holds no notes"),
    (["--score", "{dir}/notes.txt"], "unsupported type '.txt'"),
    (["--score", "{dir}/broken.mid"], "cannot be read as MIDI"),
    (["--score", "{duo}", "--part", "Tuba"], "no part named 'Tuba'; its parts are ['Violin', 'Violoncello']"),
    (["--score", "{tune}", "{tune}"], "given twice"),
    (["--minutes", "1", "--part", "Violin"], "give --score too"),
    (["--minutes", "1", "--identity", "-3"], "--identity must be an identity seed >= 0"),
    (["--minutes", "1", "--identity", "3", "--identities", "2"], "--identity (one performer) and --identities"),
]


@pytest.mark.parametrize(("args", "message"), BAD_REQUESTS, ids=[" ".join(a) or "nothing" for a, _ in BAD_REQUESTS])
def test_cli_synth_refuses_bad_requests(args: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    files = {"dir": str(tmp_path), "file": str(tmp_path / "a-file"),
             "tune": str(_midi(tmp_path / "tune.mid", [(0.0, 1.0, 48, 80)])),
             "duo": str(_musicxml(tmp_path / "duo.musicxml", {"Violin": ["E5"], "Violoncello": ["C3"]}))}
    (tmp_path / "a-file").write_text("not a folder")
    _midi(tmp_path / "silent.mid", [])
    _musicxml(tmp_path / "rests.musicxml", {"Cello": ["r", "r"]})
    (tmp_path / "notes.txt").write_text("C D E")
    (tmp_path / "broken.mid").write_bytes(b"MThd garbage")
    out = tmp_path / "out"
    argv = BASE + [a.format(**files) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("letsplay data: error: ") and err.count("\n") == 1  # one line
    assert not out.exists()
    assert (tmp_path / "a-file").read_text() == "not a folder"
