"""Readers for real data on small fixtures made here: a Sub-URMP-shaped tree, OpenPose
JSON, and a short mp4 with an audio track (PyAV)."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.prepare import mediapipe_available, prepare_videos, read_video_audio
from letsplay.models.data.readers import (
    COCO18_TO_BODY25,
    open_dataset,
    open_sub_urmp,
    read_openpose_folder,
    read_openpose_frame,
)
from letsplay.models.spec import AudioSpec
from letsplay.ui.cli import main

SR = 44100


# --------------------------------------------------------------------------- fixtures


def _tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _openpose_person(body: np.ndarray, left: np.ndarray | None = None, right: np.ndarray | None = None) -> dict:
    """OpenPose's people[] entry: flat [x, y, c, ...] lists."""
    def flat(a: np.ndarray | None) -> list[float]:
        return [] if a is None else [float(v) for v in a.reshape(-1)]

    return {"person_id": [-1], "pose_keypoints_2d": flat(body), "hand_left_keypoints_2d": flat(left),
            "hand_right_keypoints_2d": flat(right), "face_keypoints_2d": []}


def _write_json(path: Path, people: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1.3, "people": people}))


@pytest.fixture(scope="module")
def sub_urmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2
    import soundfile as sf

    root = tmp_path_factory.mktemp("suburmp")
    for split, inst, rec, ks in (("train", "cello", "cello01", [0, 1, 2, 3, 5, 6]),
                                 ("validation", "cello", "cello02", [0, 1, 2]),
                                 ("train", "trombone", "trombone01", [0, 1])):
        for k in ks:
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, :, 1] = 20 * k  # frame k is recognisable by its green level
            cv2.imwrite(str(_mk(root / "img" / split / inst / f"{rec}_{k}.jpg")), img)
            sf.write(str(_mk(root / "chunk" / split / inst / f"{rec}_{k}.wav")), _tone(220 + 20 * k, 0.5, 22050),
                     22050, subtype="PCM_16")
            if split == "train" and inst == "cello" and k != 2:
                body = np.zeros((25, 3), np.float32)
                body[1] = (32, 10, 0.9)  # neck
                body[4] = (10 + k, 30, 0.8)  # right wrist
                _write_json(root / "openpose" / split / inst / f"{rec}_{k}_keypoints.json", [_openpose_person(body)])
    return root


def _mk(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def make_video(path: Path, seconds: float = 2.0, fps: int = 25, size: tuple[int, int] = (320, 240),
               audio_rate: int = 48000, with_audio: bool = True) -> np.ndarray:
    """A short H.264 + AAC mp4 of the synthetic cellist; returns the stereo audio written."""
    import av

    w, h = size
    n = int(seconds * fps)
    rend = _video_performer(seconds, fps, h)
    left = np.stack([_tone(330.0, seconds, audio_rate), _tone(440.0, seconds, audio_rate)])
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=audio_rate, layout="stereo") if with_audio else None
        for i in range(n):
            frame = np.full((h, w, 3), 90, np.uint8)
            x0 = (w - h) // 2
            frame[:, x0:x0 + h] = rend.render(i)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in vs.encode(vf):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if aus is not None:
            step = 1024
            for s in range(0, left.shape[1], step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(left[:, s:s + step]), format="fltp",
                                                layout="stereo")
                af.sample_rate = audio_rate
                af.pts = s
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return left


def _video_performer(seconds: float = 2.0, fps: int = 25, h: int = 240):
    """The drawn cellist :func:`make_video` films, in an h x h square."""
    from letsplay.models.data.performer_motion import Body, perform
    from letsplay.models.data.performer_render import Look, PerformerRenderer
    from letsplay.models.data.scores import random_melody
    from letsplay.models.spec import VideoSpec

    body = Body.from_seed(3, "cello")
    n = int(seconds * fps)
    perf = perform(random_melody("cello", 1, seconds).notes, body, n, VideoSpec(fps=fps, height=h, width=h))
    return PerformerRenderer(body, Look.from_seed(3), perf, h, h)


def _video_parts(seconds: float = 2.0, fps: int = 25, h: int = 240) -> np.ndarray:
    """The part maps [T, h, h] of :func:`make_video`'s performer (the square it is drawn in)."""
    rend = _video_performer(seconds, fps, h)
    return np.stack([rend.render_parts(i)[1] for i in range(int(seconds * fps))])


# --------------------------------------------------------------------------- Sub-URMP


def test_sub_urmp_tree(sub_urmp: Path) -> None:
    clips = open_sub_urmp(sub_urmp, instrument="cello", split="train", openpose_root=sub_urmp / "openpose")
    # cello01 has images 0-3 and 5-6: two runs of consecutive frames
    assert [c.n_frames for c in clips] == [4, 2]
    c = clips[0]
    assert c.fps == pytest.approx(2.0) and c.split == "train" and c.instrument == "cello"
    frames = c.frames(1, 3)
    assert frames.shape == (3, 48, 64, 3)
    assert [int(round(f[..., 1].mean() / 20)) for f in frames] == [1, 2, 3]
    audio = c.audio(AudioSpec())
    assert len(audio) == 4 * SR // 2  # four 0.5 s chunks, resampled to 44.1 kHz
    # the second chunk is the 240 Hz tone: count zero crossings in it
    seg = audio[SR // 2 + 1000: SR - 1000]
    crossings = np.sum(np.diff(np.signbit(seg).astype(int)) != 0) / (len(seg) / SR) / 2
    assert crossings == pytest.approx(240, rel=0.02)
    kp, conf = c.keypoints()
    assert kp.shape == (4, 67, 2) and conf.shape == (4, 67)
    assert conf[0, 1] == pytest.approx(0.9)
    assert kp[0, 1, 0] == pytest.approx(32 / 64) and kp[0, 1, 1] == pytest.approx(10 / 48)
    assert conf[2].max() == 0.0  # no OpenPose file for that image: everything missing
    assert conf[1, 4] == pytest.approx(0.8) and kp[1, 4, 0] == pytest.approx(11 / 64)
    everything = open_sub_urmp(sub_urmp)
    assert {(c.split, c.instrument) for c in everything} == {("train", "cello"), ("validation", "cello"),
                                                             ("train", "trombone")}
    with pytest.raises(fmt.DatasetError):
        open_sub_urmp(sub_urmp / "img")


# --------------------------------------------------------------------------- OpenPose


def test_openpose_body25_coco18_hands_and_people(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    body25 = np.concatenate([rng.uniform(10, 90, (25, 2)), np.full((25, 1), 0.7)], 1)
    body25[3] = 0  # a missing elbow: (0, 0, 0)
    hand = np.concatenate([rng.uniform(10, 90, (21, 2)), np.full((21, 1), 0.6)], 1)
    kp, conf = read_openpose_frame({"people": [_openpose_person(body25, hand, None)]}, 100, 200)
    assert kp.shape == (67, 2) and conf.shape == (67,)
    assert np.allclose(kp[:25][conf[:25] > 0], (body25[:, :2] / [100, 200])[conf[:25] > 0])
    assert conf[3] == 0 and np.all(kp[3] == 0)
    assert np.allclose(kp[25:46], hand[:, :2] / [100, 200]) and np.allclose(conf[25:46], 0.6)
    assert np.all(conf[46:] == 0)  # no right hand

    coco = np.concatenate([rng.uniform(10, 90, (18, 2)), np.full((18, 1), 0.5)], 1)
    kp, conf = read_openpose_frame({"people": [_openpose_person(coco)]}, 100, 100)
    for ci, bi in enumerate(COCO18_TO_BODY25):
        assert np.allclose(kp[bi], coco[ci, :2] / 100)
    assert np.allclose(kp[8], (coco[8, :2] + coco[11, :2]) / 200)  # mid-hip = mean of the hips
    assert np.all(conf[19:25] == 0) and conf[8] == pytest.approx(0.5)

    # two people: the more confident one, or the one nearest the previous neck
    weak = body25.copy()
    weak[:, 2] = 0.1
    weak[1, :2] = (80, 20)
    two = {"people": [_openpose_person(weak), _openpose_person(body25)]}
    kp, _ = read_openpose_frame(two, 100, 200)
    assert np.allclose(kp[1], body25[1, :2] / [100, 200])
    kp, _ = read_openpose_frame(two, 100, 200, near=np.array([0.8, 0.1]))
    assert np.allclose(kp[1], [0.8, 0.1])
    kp, conf = read_openpose_frame({"people": []}, 100, 100)
    assert conf.max() == 0

    folder = tmp_path / "op"
    for i in (10, 2, 1):  # file order is by frame number, not by name
        b = body25.copy()
        b[0, 0] = i
        _write_json(folder / f"video_{i:012d}_keypoints.json", [_openpose_person(b)])
    kps, confs, names = read_openpose_folder(folder, 100, 100)
    assert kps.shape == (3, 67, 2) and list(kps[:, 0, 0] * 100) == pytest.approx([1, 2, 10])
    assert names[0] == "video_000000000001_keypoints.json"
    with pytest.raises(fmt.DatasetError, match="pose_keypoints_2d"):
        read_openpose_frame({"people": [{"pose_keypoints_2d": [1.0] * 30}]}, 10, 10)


# --------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("vid") / "performance.mp4"
    audio = make_video(path)
    return path, audio


def test_video_audio_track(video: tuple[Path, np.ndarray]) -> None:
    path, stereo = video
    audio = read_video_audio(path, AudioSpec())
    assert audio.dtype == np.float32
    assert abs(len(audio) - 2.0 * SR) < 0.05 * SR  # AAC adds a little priming
    spec = np.abs(np.fft.rfft(audio[SR // 2: SR // 2 + 16384]))
    freqs = np.fft.rfftfreq(16384, 1 / SR)
    peaks = sorted(freqs[np.argsort(spec)[-2:]])  # both channels' tones survive the mono mix
    assert peaks[0] == pytest.approx(330, abs=4) and peaks[1] == pytest.approx(440, abs=4)


def test_prepare_with_openpose_json(video: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = video
    op = tmp_path / "openpose"
    n_src = 50  # 2 s at 25 fps
    for i in range(n_src):
        body = np.zeros((25, 3), np.float32)
        body[0] = (160, 40 + i, 0.9)  # the nose, in 320x240 source pixels
        body[7] = (10, 100, 0.9)  # left wrist: outside the centred square crop
        _write_json(op / f"performance_{i:012d}_keypoints.json", [_openpose_person(body)])
    out = tmp_path / "ds"
    rc = main(["data", "prepare", str(path), "--out", str(out), "--instrument", "cello", "--openpose", str(op),
               "--clip-seconds", "1.0", "--split", "test"])
    assert rc == 0
    clips = open_dataset(out)
    assert [c.n_frames for c in clips] == [30, 30]  # retimed to 30 fps, cut into 1 s clips
    assert all(c.split == "test" and c.meta["kind"] == "prepared" for c in clips)
    c = clips[1]
    kp, conf = c.keypoints()
    # output frame 30 + j shows source frame floor((30 + j) * 25 / 30); its nose was at y = 40 + that
    for j in (0, 7, 29):
        src = int(np.floor((30 + j) * 25 / 30 + 1e-9))
        assert kp[j, 0, 0] == pytest.approx((160 - 40) / 240, abs=1e-5)
        assert kp[j, 0, 1] == pytest.approx((40 + src) / 240, abs=1e-5)
    assert np.all(conf[:, 7] == 0)  # cropped away
    assert c.frames(0, 30).shape == (30, 256, 256, 3)
    audio = c.audio(AudioSpec())
    assert len(audio) == SR  # exactly the clip's second
    with pytest.raises(fmt.DatasetError, match="different dataset"):
        prepare_videos([path], out, "trombone", openpose=op, clip_seconds=1.0, split="test")


def test_prepare_needs_audio(tmp_path: Path) -> None:
    silent = tmp_path / "silent.mp4"
    make_video(silent, seconds=0.5, with_audio=False)
    op = tmp_path / "op"
    _write_json(op / "silent_000000000000_keypoints.json", [])
    with pytest.raises(fmt.DatasetError, match="no audio track"):
        prepare_videos([silent], tmp_path / "ds", "cello", openpose=op)


def test_prepare_without_pose_extra_says_which_extra(video: tuple[Path, np.ndarray], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = video
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # as if the extra were not installed: import fails
    assert main(["data", "prepare", str(path), "--out", str(tmp_path / "ds"), "--instrument", "cello"]) == 2
    assert "[pose]" in capsys.readouterr().err


@pytest.mark.skipif(not mediapipe_available(), reason="the optional [pose] extra (mediapipe) is not installed")
def test_prepare_with_mediapipe(video: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = video
    out = tmp_path / "ds"
    prepare_videos([path], out, "cello", clip_seconds=None)
    (c,) = open_dataset(out)
    assert c.n_frames == 60
    kp, conf = c.keypoints()
    assert kp.shape == (60, 67, 2) and conf.shape == (60, 67)
    assert conf.min() >= 0 and conf.max() <= 1 and kp.min() >= 0 and kp.max() <= 1
    assert np.all(kp[conf == 0] == 0)

    # each frame's part map: the silhouette cut by the nearest bone, against the renderer's own
    import cv2

    from letsplay.models.data.performer_render import PART_LABELS
    from letsplay.models.data.torch_dataset import clip_parts
    from letsplay.models.warp import LayeredWarp, reference_from_clip

    labels, names = clip_parts(c)
    assert labels.shape == (60, 256, 256) and names == PART_LABELS
    body = [PART_LABELS.index(k) for k in ("head", "torso", "right_upper_arm", "right_forearm", "right_hand",
                                           "left_upper_arm", "left_forearm", "left_hand", "legs")]
    truth = _video_parts()
    for i in range(0, 60, 12):
        t = cv2.resize(truth[min(int(i * 25 / 30), len(truth) - 1)], (256, 256), interpolation=cv2.INTER_NEAREST)
        p = labels[i]
        on_body = np.isin(t, body)
        assert (t[p > 0] > 0).mean() > 0.85  # what it calls the performer is the performer (or the cello)
        assert (p[on_body] > 0).mean() > 0.8  # and it finds most of the body
        both = on_body & (p > 0)
        assert (p[both] == t[both]).mean() > 0.65, i  # most body pixels get their own part
    # a warp performer can take its reference from the prepared clip (no instrument points:
    # what is not the body stays in the room)
    ref = reference_from_clip(c, (256, 256))
    warp = LayeredWarp("cello", (256, 256)).set_reference(*ref.tensors())
    assert warp.has_reference and set(np.unique(ref.labels)) <= {0, *body}
