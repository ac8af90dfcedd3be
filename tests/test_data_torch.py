"""The PyTorch Dataset: frames, CQT windows from the shared front end, keypoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.synth_dataset import SynthDatasetConfig, synthesize_dataset
from letsplay.models.data.torch_dataset import PerformanceDataset, open_sources
from letsplay.models.features import CQT, frame_windows
from letsplay.models.spec import AudioSpec, VideoSpec


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tds") / "cello"
    synthesize_dataset(root, SynthDatasetConfig("cello", minutes=0.1, clip_seconds=3.0, seed=2,
                                                synth="tinysoundfont"), workers=1)
    return root


def test_items_shapes_and_values(ds_root: Path, tmp_path: Path) -> None:
    clips = open_sources(ds_root)
    ds = PerformanceDataset(clips, seq_len=8, stride=8, cache_dir=tmp_path / "cache")
    assert len(ds) == sum((c.n_frames - 8) // 8 + 1 for c in clips)
    item = ds[len(ds) - 1]  # the last window of the last clip: its CQT needs audio up to the end
    assert item["frames"].shape == (8, 3, 256, 256) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    spec = AudioSpec()
    assert item["cqt"].shape == (8, spec.n_bins, spec.window_columns)
    assert item["keypoints"].shape == (8, 67, 2) and item["confidence"].shape == (8, 67)
    ci, s = ds.window_start(len(ds) - 1)
    clip = clips[ci]
    kp, _ = clip.keypoints()
    assert torch.equal(item["keypoints"], torch.from_numpy(kp[s:s + 8]))
    raw = clip.frames(s, 8)
    assert torch.allclose(item["frames"], torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 127.5 - 1)
    # the CQT windows are exactly the shared front end's, computed from the clip's audio
    audio = torch.from_numpy(clip.audio(spec))
    audio = torch.cat([audio, torch.zeros(spec.hop * 4 + 1)])  # silence after the clip's end
    want = frame_windows(CQT(spec)(audio), spec, VideoSpec(), range(s, s + 8))
    assert torch.equal(item["cqt"], want)
    # cached on disk: a fresh dataset reads it back and gets the same numbers
    assert list((tmp_path / "cache").glob("cqt-*.npy"))
    ds2 = PerformanceDataset(clips, seq_len=8, stride=8, cache_dir=tmp_path / "cache")
    assert torch.equal(ds2[len(ds) - 1]["cqt"], item["cqt"])


def test_audio_follows_the_music(ds_root: Path) -> None:
    # CQT energy peaks at the bin of the note being played (the performer's audio is real)
    spec = AudioSpec()
    hits = checked = 0
    for clip in open_sources(ds_root):
        ds = PerformanceDataset([clip], seq_len=1, stride=1)
        for onset, dur, pitch, _vel in clip.notes():
            f = int((onset + 0.2) * 30)
            if dur < 0.25 or f >= clip.n_frames:
                continue
            col = ds[f]["cqt"][0, :, -1]  # newest column of the frame's window
            got = int(torch.argmax(col[:60]))
            want = round(12 * np.log2(440 * 2 ** ((pitch - 69) / 12) / spec.fmin))
            checked += 1
            hits += got - want in (0, 12)  # the fundamental or its octave
    assert checked >= 3 and hits / checked >= 0.6


def test_seeded_random_offsets(ds_root: Path) -> None:
    clips = open_sources(ds_root)
    a = PerformanceDataset(clips, seq_len=4, stride=10, seed=3, random_offset=True)
    b = PerformanceDataset(clips, seq_len=4, stride=10, seed=3, random_offset=True)
    starts = [a.window_start(i) for i in range(len(a))]
    assert starts == [b.window_start(i) for i in range(len(b))]
    a.set_epoch(1)
    assert [a.window_start(i) for i in range(len(a))] != starts
    c = PerformanceDataset(clips, seq_len=4, stride=10, seed=4, random_offset=True)
    assert [c.window_start(i) for i in range(len(c))] != starts
    for ci, s in starts:
        assert 0 <= s <= clips[ci].n_frames - 4
    loader = torch.utils.data.DataLoader(a, batch_size=2, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["frames"].shape == (2, 4, 3, 256, 256) and len(batch["clip"]) == 2


def test_sub_urmp_source_resized(tmp_path: Path) -> None:
    import cv2
    import soundfile as sf

    for k in range(6):
        img = np.zeros((60, 80, 3), np.uint8)
        img[:, 40:] = 255  # right half white
        p = tmp_path / "img" / "train" / "cello" / f"cello01_{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
        w = tmp_path / "chunk" / "train" / "cello" / f"cello01_{k}.wav"
        w.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(w), np.zeros(22050, np.float32), 44100)
    clips = open_sources(tmp_path, split="train")
    ds = PerformanceDataset(clips, seq_len=3, video_spec=VideoSpec(height=64, width=64))
    item = ds[0]
    assert item["frames"].shape == (3, 3, 64, 64) and item["cqt"].shape == (3, 84, 87)
    assert item["confidence"].max() == 0  # Sub-URMP has no keypoints unless OpenPose files are given
    left, right = item["frames"][0, :, :, :28].mean(), item["frames"][0, :, :, 36:].mean()
    assert left < -0.9 and right > 0.9  # centre crop of the 80x60 frame keeps the split in the middle
    with pytest.raises(ValueError, match="neither"):
        open_sources(tmp_path / "img")
    with pytest.raises(ValueError, match="seq_len"):
        PerformanceDataset(clips, seq_len=100)
    assert fmt.SPLITS == ("train", "val", "test")


def test_a_longer_lookahead_recomputes_a_cached_cqt_that_is_too_short(ds_root: Path, tmp_path: Path) -> None:
    """The last frame of a clip with 100 ms of lookahead reads columns past the clip's end;
    a CQT cached for no lookahead is too short for it and is made again, not failed on."""
    clips = open_sources(ds_root)
    ds0 = PerformanceDataset(clips, seq_len=8, stride=8, cache_dir=tmp_path / "cache")
    n0 = ds0.clip_cqt(0).shape[-1]
    ahead = PerformanceDataset(clips, seq_len=8, stride=8, cache_dir=tmp_path / "cache",
                               video_spec=VideoSpec(lookahead_ms=100.0))
    ahead.with_frames = False
    last = (clips[0].n_frames - 8) // 8
    item = ahead.item(0, last * 8)  # the clip's last full window
    assert ahead.clip_cqt(0).shape[-1] > n0 and item["cqt"].shape == (8, 84, 87)
    # the motion targets come with it: onsets from the notes, the bow from the physics
    ahead.with_motion = True
    item = ahead.item(0, 0, clips[0].n_frames)
    assert item["motion"].shape == (clips[0].n_frames, 6) and item["motion_mask"][:, [0, 1, 2, 5]].min() == 1.0
    on = np.flatnonzero(item["motion"][:, 0].numpy())
    want = sorted({int(np.ceil(n[0] * clips[0].fps - 1e-6)) for n in clips[0].notes()} & set(range(clips[0].n_frames)))
    assert on.tolist() == want
