"""Dataset format 2: instrument points and part-label maps on disk, in the torch dataset;
format-1 folders still read, train and evaluate."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.performer_motion import Body, perform
from letsplay.models.data.performer_render import PART_LABELS, Look, PerformerRenderer
from letsplay.models.data.readers import open_dataset
from letsplay.models.data.scores import Note
from letsplay.models.data.synth_dataset import SynthDatasetConfig, synthesize_dataset
from letsplay.models.data.torch_dataset import PARTS_UNKNOWN, PerformanceDataset, open_sources
from letsplay.models.skeleton import instrument_point_names
from letsplay.models.spec import VideoSpec

VIDEO = VideoSpec(height=32, width=32)


@pytest.fixture(scope="module")
def ds2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmt") / "cello"
    cfg = SynthDatasetConfig("cello", minutes=0.1, clip_seconds=3.0, identities=1, min_clip_seconds=3.0, seed=3,
                             synth="tinysoundfont")
    synthesize_dataset(root, cfg, workers=1, video_spec=VIDEO)
    return root


def _as_format_1(src: Path, dst: Path) -> Path:
    """A copy of a dataset as format 1 wrote it: no instrument points, no part maps."""
    shutil.copytree(src, dst)
    m = json.loads((dst / fmt.MANIFEST).read_text())
    m["format_version"] = 1
    (dst / fmt.MANIFEST).write_text(json.dumps(m))
    for clip in (dst / "clips").iterdir():
        files = fmt.ClipFiles(clip)
        files.parts.unlink()
        with np.load(files.keypoints) as z:
            np.savez_compressed(files.keypoints, times=z["times"], keypoints=z["keypoints"],
                                confidence=z["confidence"], format_version=np.int32(1))
        meta = json.loads(files.manifest.read_text())
        meta["format_version"] = 1
        files.manifest.write_text(json.dumps(meta))
    return dst


def test_format_2_clip_round_trips(ds2: Path) -> None:
    m = fmt.load_manifest(ds2)
    assert m["format_version"] == fmt.FORMAT_VERSION == 2
    clips = open_dataset(ds2)
    assert clips
    names = instrument_point_names("cello")
    for clip in clips:
        assert clip.meta["format_version"] == 2
        got = fmt.read_instrument_points(clip.files.keypoints)
        assert got is not None and got.names == names
        assert got.points.shape == (clip.n_frames, len(names), 2) and got.points.dtype == np.float32
        # exactly the performer's points: the same notes and identity give the same numbers
        notes = [Note(*n) for n in clip.notes()]
        body = Body.from_seed(clip.meta["identity_seed"], "cello")
        perf = perform(notes, body, clip.n_frames, VIDEO)
        assert np.array_equal(got.points, perf.instrument_points)
        inside = ((perf.instrument_points >= 0) & (perf.instrument_points <= 1)).all(-1)
        assert np.array_equal(got.confidence, inside.astype(np.float32))
        labels, label_names = fmt.read_parts(clip.files.parts)
        assert label_names == PART_LABELS
        assert labels.shape == (clip.n_frames, 32, 32) and labels.dtype == np.uint8
        r = PerformerRenderer(body, Look.from_seed(body.seed), perf, 32, 32)
        i = clip.n_frames // 2
        _, want = r.render_parts(i)
        assert np.array_equal(labels[i], want)
        assert {"bow", "instrument_body", "head"} <= {PART_LABELS[k] for k in np.unique(labels)}
        with np.load(clip.files.keypoints) as z:
            assert int(z["format_version"]) == 2


def test_items_carry_instrument_points_and_parts(ds2: Path) -> None:
    clips = open_sources(ds2)
    ds = PerformanceDataset(clips, seq_len=4, stride=4, video_spec=VIDEO)
    item = ds[1]
    ci, s = ds.window_start(1)
    got = fmt.read_instrument_points(clips[ci].files.keypoints)
    assert item["instrument_points"].shape == (4, 5, 2) and item["instrument_confidence"].shape == (4, 5)
    assert torch.equal(item["instrument_points"][item["instrument_confidence"] > 0],
                       torch.from_numpy(got.points[s:s + 4])[item["instrument_confidence"] > 0])
    assert "parts" not in item  # only on request
    ds.with_parts = True
    item = ds[1]
    labels, _ = fmt.read_parts(clips[ci].files.parts)
    assert item["parts"].dtype == torch.uint8 and torch.equal(item["parts"], torch.from_numpy(labels[s:s + 4]))
    # another size: the maps are cropped and resized with the frames, by nearest neighbour
    small = PerformanceDataset(clips, seq_len=4, stride=4, video_spec=VideoSpec(height=16, width=16))
    small.with_parts = True
    it = small[1]
    assert it["parts"].shape == (4, 16, 16) and it["frames"].shape == (4, 3, 16, 16)
    assert set(it["parts"].unique().tolist()) <= set(np.unique(labels[s:s + 4]).tolist())


def test_format_1_folder_reads_trains_and_evaluates(ds2: Path, tmp_path: Path) -> None:
    from letsplay.models.evaluate import evaluate, held_out_clips
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset
    from letsplay.models.train import TrainConfig, Trainer

    old = _as_format_1(ds2, tmp_path / "v1")
    assert fmt.load_manifest(old)["format_version"] == 1
    clips = open_sources(old)
    assert clips and fmt.read_instrument_points(clips[0].files.keypoints) is None
    ds = PerformanceDataset(clips, seq_len=3, video_spec=VIDEO)
    ds.with_parts = True
    item = ds[0]
    assert item["instrument_points"].shape == (3, 5, 2)
    assert float(item["instrument_confidence"].abs().sum()) == 0.0  # unknown, not "at the origin"
    assert bool((item["parts"] == PARTS_UNKNOWN).all())
    new_item = PerformanceDataset(open_sources(ds2), seq_len=3, video_spec=VIDEO)[0]
    assert torch.equal(item["keypoints"], new_item["keypoints"]) and torch.equal(item["frames"], new_item["frames"])

    torch.set_num_threads(1)
    cfg = TrainConfig(stage="all", steps=3, stage_fractions=(1.0, 1.0, 1.0), batch=2, seq_len=3, ckpt_every=3,
                      log_every=1, perc_size=32)
    res = Trainer(preset("tiny", "cello"), cfg, old, tmp_path / "run", progress=False).run()
    assert res.step == 3 and all(math.isfinite(v) for h in res.history for v in h.values())
    ev = evaluate(Performer.load(res.performer_path), held_out_clips(old, "train", "cello")[:1], max_seconds=1.0,
                  progress=False)
    assert ev.frames == 30 and ev.model.psnr is not None and math.isfinite(ev.model.psnr)


def test_newer_formats_are_refused(ds2: Path, tmp_path: Path) -> None:
    root = tmp_path / "v3"
    shutil.copytree(ds2, root)
    m = json.loads((root / fmt.MANIFEST).read_text())
    m["format_version"] = fmt.FORMAT_VERSION + 1
    (root / fmt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(fmt.DatasetError, match="newer than this letsplay reads"):
        open_dataset(root)
    kp = next((root / "clips").iterdir()) / "keypoints.npz"
    with np.load(kp) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(kp, **{**arrays, "format_version": np.int32(fmt.FORMAT_VERSION + 1)})
    with pytest.raises(fmt.DatasetError, match="update letsplay"):
        fmt.read_instrument_points(kp)


def test_writers_check_their_arrays(tmp_path: Path) -> None:
    T = 3
    times, kp, conf = np.arange(T) / 30.0, np.zeros((T, 67, 2)), np.ones((T, 67))
    with pytest.raises(ValueError, match="one per name"):
        fmt.write_keypoints(tmp_path / "k.npz", times, kp, conf, np.zeros((T, 2, 2)), ("a", "b", "c"))
    with pytest.raises(ValueError, match="need instrument_points"):
        fmt.write_keypoints(tmp_path / "k.npz", times, kp, conf, instrument_point_names=("a",))
    fmt.write_keypoints(tmp_path / "k.npz", times, kp, conf)  # prepared clips: no instrument points
    assert fmt.read_instrument_points(tmp_path / "k.npz") is None
    with pytest.raises(ValueError, match="uint8"):
        fmt.write_parts(tmp_path / "p.npz", np.zeros((T, 4, 4), np.int32), PART_LABELS)
    with pytest.raises(ValueError, match="label names"):
        fmt.write_parts(tmp_path / "p.npz", np.full((T, 4, 4), 40, np.uint8), PART_LABELS)


def test_video_reader_without_pyav_reads_the_same_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PyAV is missing, OpenCV reads a letsplay mp4: the same frames at the same indices."""
    rng = np.random.default_rng(0)
    video = VideoSpec(fps=30.0, height=64, width=64)
    frames = []
    for i in range(70):  # a bright block that moves one column per frame: an index off by one shows
        f = np.full((64, 64, 3), 40, np.uint8) + rng.integers(0, 8, (64, 64, 3), dtype=np.uint8)
        f[20:40, i % 56:(i % 56) + 8] = 230
        frames.append(f)
    path = tmp_path / "v.mp4"
    with fmt.VideoWriter(path, video) as w:
        for f in frames:
            w.write(f)
    with_av = fmt.VideoReader(path).frames(31, 12)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # import av now raises ImportError
    r = fmt.VideoReader(path)
    without = r.frames(31, 12)
    assert r._cv and r.fps == pytest.approx(30.0)
    assert without.shape == with_av.shape == (12, 64, 64, 3)
    assert np.abs(without.astype(int) - with_av.astype(int)).mean() < 1.0
    cols = [int(np.argmax(f[30, :, 0] > 150)) for f in without]
    assert cols == [(31 + k) % 56 for k in range(12)]
    assert len(list(r)) == 70
    with pytest.raises(fmt.DatasetError, match="wanted frames"):
        r.frames(65, 10)


def test_a_packed_split_trains_without_its_audio(ds2: Path, tmp_path: Path) -> None:
    """scripts/pack_training_data.py: the clips with their CQT (fp16) in place of the audio
    give the training windows the audio gives, and a spec they were not packed for is refused."""
    import importlib.util

    from letsplay.models.presets import preset
    from letsplay.models.spec import AudioSpec
    from letsplay.models.train import TrainConfig, Trainer

    spec_ = importlib.util.spec_from_file_location("pack", Path(__file__).parents[1] / "scripts/pack_training_data.py")
    pack = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(pack)
    split = open_dataset(ds2)[0].split
    ids = pack.pack(ds2, tmp_path / "p", split=split, lookahead_ms=100.0)
    packed = open_dataset(tmp_path / "p", split)
    assert [c.id for c in packed] == ids and not any(c.files.audio.exists() for c in packed)
    assert all(c.files.cqt.is_file() and c.files.video.is_file() for c in packed)
    audio = AudioSpec(**json.loads((ds2 / fmt.MANIFEST).read_text())["audio_spec"])
    v = VideoSpec(height=32, width=32, lookahead_ms=100.0)
    a = PerformanceDataset(open_dataset(ds2, split)[:1], seq_len=4, audio_spec=audio, video_spec=v)
    b = PerformanceDataset(packed[:1], seq_len=4, audio_spec=audio, video_spec=v)
    ca, cb = a.clip_cqt(0), b.clip_cqt(0)
    assert cb.dtype == torch.float32 and cb.shape == ca.shape
    assert torch.allclose(ca, cb, rtol=2e-3, atol=1e-4)  # float16's rounding, nothing else
    ia, ib = a[0], b[0]
    assert torch.equal(ia["frames"], ib["frames"]) and torch.equal(ia["keypoints"], ib["keypoints"])
    other = AudioSpec(**{**json.loads(audio.to_json()), "n_bins": audio.n_bins - 12})
    with pytest.raises(fmt.DatasetError, match="packed for training without its audio"):
        PerformanceDataset(packed[:1], seq_len=4, audio_spec=other, video_spec=v).clip_cqt(0)
    r = Trainer(preset("tiny", "cello"), TrainConfig(stage="stu", steps=1, batch=1, seq_len=3, perc_size=32,
                                                     adv_weight=0.0),
                tmp_path / "p", tmp_path / "run", progress=False).run()
    assert r.step == 1 and r.history[0]["l1"] > 0
    kp_ids = pack.pack(ds2, tmp_path / "k", split=split, lookahead_ms=100.0, keypoints_only=True)
    k = open_dataset(tmp_path / "k", split)
    assert [c.id for c in k] == kp_ids and k[0].frames(0, 1).shape == (1, 32, 32, 3)
    assert k[0].files.video.stat().st_size < packed[0].files.video.stat().st_size
    with pytest.raises(fmt.DatasetError, match="without --keypoints-only"):
        k[0].frames(0, 4)
    r = Trainer(preset("tiny", "cello"), TrainConfig(stage="kp", steps=1, batch=1, seq_len=3),
                tmp_path / "k", tmp_path / "run_kp", progress=False).run()
    assert r.step == 1 and r.history[0]["kp"] > 0
