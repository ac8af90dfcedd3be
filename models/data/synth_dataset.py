"""Synthetic performance datasets: scores -> soundfont audio + rendered performer video.

:func:`synthesize_dataset` plans a dataset (which pieces, which clips, which performer
identity plays each, which split each piece belongs to), writes the manifest, then
renders the clips that are not complete yet, in parallel worker processes. Planning is
deterministic in the config, so an interrupted run started again with the same config
picks up where it stopped; a different config aimed at the same folder is refused.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from letsplay.models.data import dataset_format as fmt
from letsplay.models.data.expression import NO_VIBRATO
from letsplay.models.data.instruments import get_instrument
from letsplay.models.data.performer_motion import CELLO_VIBRATO, Body, cello_vibrato_allowed, perform
from letsplay.models.data.performer_render import Look, PerformerRenderer
from letsplay.models.data.scores import CORPUS_PIECES, CorpusPiece, Score, corpus_score, random_melody
from letsplay.models.data.synth_audio import SynthConfig, render_notes, resolve_backend
from letsplay.models.skeleton import N_KEYPOINTS
from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

# Bump when the picture or the motion changes: old datasets then refuse to resume.
RENDERER_VERSION = 2  # 2: causal bowing (bow_travel)


@dataclass(frozen=True)
class SynthDatasetConfig:
    """What a synthetic dataset contains. Stored in its manifest; resuming needs the same."""

    instrument: str  # "cello" | "trombone"
    minutes: float  # total length of all clips
    seed: int = 0  # everything random (piece order, tempi, identities, melodies) follows from it
    clip_seconds: float = 30.0  # clip length (the last clip of a piece may be shorter, >= min_clip_seconds)
    identities: int = 4  # performers (identity seeds) in the dataset
    synth: str = "auto"  # "auto" | "tinysoundfont" | "fluidsynth" (stored resolved)
    frames: str = "mp4"  # "mp4" (H.264) | "jpeg"
    random_fraction: float = 0.25  # share of the time played from seeded random melodies
    max_piece_seconds: float = 120.0  # at most this much of one corpus piece (more pieces, better splits)
    min_clip_seconds: float = 5.0

    def resolved(self) -> SynthDatasetConfig:
        get_instrument(self.instrument)
        if self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.frames not in ("mp4", "jpeg"):
            raise ValueError(f"frames must be 'mp4' or 'jpeg', got {self.frames!r}")
        return SynthDatasetConfig(**{**asdict(self), "synth": resolve_backend(self.synth)})

    def to_manifest(self) -> dict[str, Any]:
        return {**asdict(self), "renderer_version": RENDERER_VERSION}


def identity_seeds(seed: int, n: int) -> list[int]:
    r = np.random.default_rng([seed, 0x1D])
    return [int(x) for x in r.integers(0, 2**31 - 1, size=n)]


def _safe(piece_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", piece_id)


# --------------------------------------------------------------------------- planning


def _make_score(args: tuple[str, str, int, float, float]) -> dict[str, Any]:
    """Worker: one piece's score as a dict (corpus part or random melody)."""
    kind, ident, seed, max_seconds, qpm_jitter = args
    if kind == "random":
        return random_melody(ident.split("#")[0], seed, max_seconds).to_dict()
    path, part, instrument = ident.split("|")
    piece = next(p for p in CORPUS_PIECES[instrument] if p.path == path and p.part == part)
    base = corpus_score(piece, instrument, max_seconds=None, seed=seed)
    qpm = base.qpm * qpm_jitter
    return corpus_score(CorpusPiece(path, part, qpm), instrument, max_seconds=max_seconds, seed=seed).to_dict()


def plan_dataset(root: Path, cfg: SynthDatasetConfig, pool: Any | None = None,
                 fps: float = 30.0) -> list[dict[str, Any]]:
    """Choose pieces, write their scores to ``root/scores``, and cut them into clips."""
    r = np.random.default_rng([cfg.seed, 0x91A])
    target = cfg.minutes * 60.0
    corpus = list(CORPUS_PIECES[cfg.instrument])
    order = r.permutation(len(corpus))
    random_target = target * cfg.random_fraction
    if random_target < cfg.min_clip_seconds:  # too little for a clip of its own
        random_target = 0.0
    elif target - random_target < cfg.min_clip_seconds:
        random_target = target
    jobs: list[tuple[str, tuple[str, str, int, float, float]]] = []
    # enough corpus pieces for the corpus share (each gives at most max_piece_seconds), a few spare
    n_corpus = min(len(corpus), int(np.ceil((target - random_target) / cfg.max_piece_seconds * 1.6)) + 1)
    for i in order[:n_corpus]:
        p = corpus[int(i)]
        jobs.append((f"music21:{p.piece_id}",
                     ("corpus", f"{p.path}|{p.part}|{cfg.instrument}", cfg.seed, cfg.max_piece_seconds,
                      float(r.uniform(0.93, 1.07)))))
    # random melodies of up to 90 s; one spare covers what the corpus pieces leave over
    n_random = int(np.ceil(random_target / 60.0)) + 1 if random_target > 0 else 0
    for j in range(n_random):
        s = int(r.integers(0, 2**31 - 1))
        jobs.append((f"random:{s}", ("random", f"{cfg.instrument}#{j}", s, 90.0, 1.0)))

    scores_dir = Path(root) / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    todo = [(pid, a) for pid, a in jobs if not (scores_dir / f"{_safe(pid)}.json").is_file()]
    if todo:
        log.info("preparing %d scores", len(todo))
        results = (pool.map(_make_score, [a for _, a in todo]) if pool is not None
                   else [_make_score(a) for _, a in todo])
        for (pid, _), d in zip(todo, results, strict=True):
            fmt.write_json_atomic(scores_dir / f"{_safe(pid)}.json", d)
    scores = {pid: Score.from_dict(fmt.read_json(scores_dir / f"{_safe(pid)}.json")) for pid, _ in jobs}

    # cut into clips: corpus pieces until their share is filled, then random melodies
    clips: list[dict[str, Any]] = []
    total = 0.0
    corpus_ids = [pid for pid, a in jobs if a[0] == "corpus"]
    random_ids = [pid for pid, a in jobs if a[0] == "random"]

    def take(pid: str, budget: float) -> float:
        """Clips from the start of a piece, up to ``budget`` seconds; a short remainder is
        merged into the clip before it rather than dropped."""
        nonlocal total
        length = round(min(budget, scores[pid].duration) * fps) / fps
        if length < cfg.min_clip_seconds:
            return 0.0
        bounds = list(np.arange(0.0, length, cfg.clip_seconds)) + [length]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < cfg.min_clip_seconds:
            del bounds[-2]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            a, b = round(a * fps) / fps, round(b * fps) / fps
            clips.append({"piece": pid, "start": a, "duration": round(b - a, 9)})
        total += length
        return length

    corpus_budget = target - random_target
    for pid in corpus_ids:
        if total >= corpus_budget - cfg.min_clip_seconds:
            break
        take(pid, min(cfg.max_piece_seconds, corpus_budget - total))
    used = {c["piece"] for c in clips}
    for pid in random_ids + corpus_ids:  # random melodies; unused corpus pieces if they fall short
        if target - total < cfg.min_clip_seconds:
            break
        if pid not in used:
            take(pid, min(60.0 if pid.startswith("random:") else cfg.max_piece_seconds, target - total))
    if not clips:
        raise ValueError(f"{cfg.minutes} minutes is too short for one clip of at least {cfg.min_clip_seconds} s")

    splits = fmt.split_for([c["piece"] for c in clips], cfg.seed)
    ids = identity_seeds(cfg.seed, cfg.identities)
    for i, c in enumerate(clips):
        c["id"] = f"c{i:04d}"
        c["split"] = splits[c["piece"]]
        c["identity_seed"] = ids[i % len(ids)]
        c["score_file"] = f"scores/{_safe(c['piece'])}.json"
    return [{k: c[k] for k in ("id", "split", "piece", "start", "duration", "identity_seed", "score_file")}
            for c in clips]


# --------------------------------------------------------------------------- one clip


def render_clip(root: Path, clip: dict[str, Any], cfg: SynthDatasetConfig, audio_spec: AudioSpec,
                video_spec: VideoSpec, threads: int = 0) -> dict[str, Any]:
    """Render and write one clip (atomically). Returns its clip manifest."""
    import cv2

    cv2.setNumThreads(1)
    root = Path(root)
    inst = get_instrument(cfg.instrument)
    score = Score.from_dict(fmt.read_json(root / clip["score_file"]))
    duration = float(clip["duration"])
    n_frames = int(round(duration * video_spec.fps))
    notes = score.segment(float(clip["start"]), float(clip["start"]) + duration)
    seed = int(clip["identity_seed"])
    body, look = Body.from_seed(seed, inst.name), Look.from_seed(seed)

    if inst.name == "cello":
        vib, allowed = CELLO_VIBRATO, cello_vibrato_allowed(notes)
    else:
        vib, allowed = NO_VIBRATO, None
    audio = render_notes(notes, inst, n_frames / video_spec.fps, audio_spec.sample_rate,
                         SynthConfig(backend=cfg.synth), vib, room_seed=seed, vibrato_allowed=allowed)
    perf = perform(notes, body, n_frames, video_spec)
    renderer = PerformerRenderer(body, look, perf, video_spec.width, video_spec.height)

    files = fmt.begin_clip(root, clip["id"])
    try:
        frame = np.empty((video_spec.height, video_spec.width, 3), np.uint8)
        if cfg.frames == "mp4":
            with fmt.VideoWriter(files.video, video_spec, threads=threads) as vw:
                for i in range(n_frames):
                    vw.write(renderer.render(i, frame))
        else:
            files.frames_dir.mkdir()
            for i in range(n_frames):
                bgr = cv2.cvtColor(renderer.render(i, frame), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(files.frames_dir / f"{i:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        fmt.write_audio(files.audio, audio, audio_spec.sample_rate)
        fmt.write_keypoints(files.keypoints, perf.times, perf.keypoints,
                            np.ones((n_frames, N_KEYPOINTS), np.float32))
        fmt.write_json_atomic(files.notes, {"notes": [[n.onset, n.duration, n.pitch, n.velocity] for n in notes]})
        np.savez_compressed(files.motion, times=perf.times, **{k: np.asarray(v) for k, v in perf.state.items()})
        manifest = {
            "format_version": fmt.FORMAT_VERSION, "id": clip["id"], "kind": "synthetic", "instrument": inst.name,
            "split": clip["split"], "identity_seed": seed, "n_frames": n_frames,
            "duration": n_frames / video_spec.fps, "frames": cfg.frames,
            "score": {"source": score.source, "piece": clip["piece"], "start": clip["start"], "qpm": score.qpm,
                      "transpose": score.transpose, "n_notes": len(notes)},
            "synth": {"backend": cfg.synth, "gm_program": inst.gm_program},
            "audio_spec": audio_spec.to_dict(), "video_spec": video_spec.to_dict(),
        }
        fmt.commit_clip(root, clip["id"], files, manifest)
    except BaseException:
        fmt.abort_clip(files)
        raise
    return manifest


def _worker(args: tuple[str, dict[str, Any], SynthDatasetConfig, AudioSpec, VideoSpec]) -> tuple[str, float]:
    root, clip, cfg, a, v = args
    m = render_clip(Path(root), clip, cfg, a, v, threads=1)
    return m["id"], float(m["duration"])


# --------------------------------------------------------------------------- the dataset


ProgressFn = Callable[[int, int, float], None]  # (clips done, clips total, seconds just written)


def synthesize_dataset(root: Path, cfg: SynthDatasetConfig, workers: int = 1,
                       audio_spec: AudioSpec | None = None, video_spec: VideoSpec | None = None,
                       progress: ProgressFn | None = None) -> dict[str, Any]:
    """Create (or resume) a synthetic dataset in ``root``; returns the final manifest."""
    root = Path(root)
    audio_spec, video_spec = audio_spec or AudioSpec(), video_spec or VideoSpec()
    if root.exists() and not (root / fmt.MANIFEST).is_file() and any(p.name != ".lock" for p in root.iterdir()):
        raise fmt.DatasetError(f"{root} is not empty and holds no letsplay dataset; choose an empty or new "
                               f"--out folder")
    with fmt.dataset_lock(root):
        return _synthesize(root, cfg, workers, audio_spec, video_spec, progress)


def _synthesize(root: Path, cfg: SynthDatasetConfig, workers: int, audio_spec: AudioSpec, video_spec: VideoSpec,
                progress: ProgressFn | None) -> dict[str, Any]:
    existing = None
    if (root / fmt.MANIFEST).is_file():
        existing = fmt.load_manifest(root)
        if cfg.synth == "auto" and existing.get("config", {}).get("synth"):
            cfg = SynthDatasetConfig(**{**asdict(cfg), "synth": existing["config"]["synth"]})
    cfg = cfg.resolved()
    wanted = fmt.dataset_manifest("synthetic", cfg.instrument, audio_spec, video_spec, cfg.to_manifest(), [])
    if existing is not None:
        fmt.check_same_dataset(existing, wanted, root)
    root.mkdir(parents=True, exist_ok=True)
    stale = fmt.remove_stale_temp(root)
    if stale:
        log.info("removed %d unfinished clip(s) from an interrupted run", stale)

    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        if existing is not None:
            clips = existing["clips"]
        else:
            clips = plan_dataset(root, cfg, pool, video_spec.fps)
            wanted["clips"] = clips
            fmt.write_json_atomic(root / fmt.MANIFEST, wanted)
        pending = [c for c in clips if not fmt.clip_complete(root, c["id"])]
        done = len(clips) - len(pending)
        log.info("%d clips planned, %d already complete", len(clips), done)
        if progress:
            progress(done, len(clips), 0.0)
        jobs = [(str(root), c, cfg, audio_spec, video_spec) for c in pending]
        results = pool.imap_unordered(_worker, jobs) if pool is not None else map(_worker, jobs)
        for _cid, seconds in results:
            done += 1
            if progress:
                progress(done, len(clips), seconds)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    manifest = fmt.load_manifest(root)
    manifest["complete"] = all(fmt.clip_complete(root, c["id"]) for c in manifest["clips"])
    fmt.write_json_atomic(root / fmt.MANIFEST, manifest)
    return manifest
