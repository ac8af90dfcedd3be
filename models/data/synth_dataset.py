"""Synthetic performance datasets: scores -> soundfont audio + rendered performer video.

:func:`synthesize_dataset` plans a dataset (which pieces, which clips, which performer
identity plays each, which split each piece belongs to), writes the manifest, then
renders the clips that are not complete yet, in parallel worker processes. Planning is
deterministic in the config, so an interrupted run started again with the same config
picks up where it stopped; a different config aimed at the same folder is refused.
"""

from __future__ import annotations

import logging
import math
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
from letsplay.models.data.performer_render import PART_LABELS, Look, PerformerRenderer
from letsplay.models.data.scores import (
    CORPUS_PIECES,
    CorpusPiece,
    Score,
    corpus_score,
    file_score,
    random_melody,
)
from letsplay.models.data.synth_audio import SynthConfig, render_notes, resolve_backend
from letsplay.models.skeleton import N_KEYPOINTS, instrument_point_names
from letsplay.models.spec import AudioSpec, VideoSpec

log = logging.getLogger(__name__)

# Bump when the picture or the motion changes: old datasets then refuse to resume.
RENDERER_VERSION = 5  # 2: causal bowing (bow_travel); 3: instrument points and part maps (format 2);
# 4: elbows that never jump to their mirror image (the cellist's left elbow did, in 91 of 92 clips);
# 5: the cellist retakes the bow after a rest (a down-bow from the lower third of the bow)


@dataclass(frozen=True)
class SynthDatasetConfig:
    """What a synthetic dataset contains. Stored in its manifest; resuming needs the same.

    Two kinds: ``minutes`` of corpus pieces and random melodies, or (``score_files``)
    exactly the given MIDI/MusicXML pieces, whole."""

    instrument: str  # "cello" | "trombone"
    minutes: float | None = None  # total length of all clips (corpus/random datasets; None with score_files)
    seed: int = 0  # everything random (piece order, tempi, identities, melodies) follows from it
    clip_seconds: float = 30.0  # clip length (the last clip of a piece may be shorter, >= min_clip_seconds)
    identities: int = 4  # performers (identity seeds) in the dataset (1 when ``identity`` is set)
    synth: str = "auto"  # "auto" | "tinysoundfont" | "fluidsynth" (stored resolved)
    soundfont: str | None = None  # another GM soundfont (.sf2; .sf3 with fluidsynth) instead of the backend's own
    frames: str = "mp4"  # "mp4" (H.264) | "jpeg"
    random_fraction: float = 0.25  # share of the time played from seeded random melodies
    max_piece_seconds: float = 120.0  # at most this much of one corpus piece (more pieces, better splits)
    min_clip_seconds: float = 5.0
    score_files: tuple[str, ...] = ()  # MIDI/MusicXML files to play instead of the corpus (paths as given)
    score_sha256: tuple[str, ...] = ()  # their contents' SHA-256 (filled in by resolved())
    part: str | None = None  # the part of each score file to play (None: chosen per file, see choose_part)
    identity: int | None = None  # one identity seed playing every clip (None: ``identities`` seeds from seed)
    split: str | None = None  # "auto" (seeded, by piece) | "train" | "val" | "test"; None: test with score_files
    # another dataset whose pieces keep their split here: a bigger set made beside a smaller
    # one never trains on the smaller one's held-out pieces (None: every split seeded as usual)
    keep_splits: str | None = None

    def validate(self) -> None:
        """Raise ValueError (naming the ``letsplay data synth`` option) for a config that cannot
        make a dataset. Reads nothing from disk but the score files' existence."""
        get_instrument(self.instrument)
        if self.score_files:
            if self.minutes is not None:
                raise ValueError("--minutes and --score exclude each other: with --score the dataset is the "
                                 "given pieces, whole; leave out --minutes")
            for f in self.score_files:
                if not Path(f).is_file():
                    raise ValueError(f"score file {f!r} " + ("is not a file" if Path(f).exists()
                                                             else "does not exist"))
            resolved = [str(Path(f).resolve()) for f in self.score_files]
            if len(set(resolved)) < len(resolved):
                raise ValueError(f"a score file is given twice: {list(self.score_files)}")
        elif self.minutes is None:
            raise ValueError("say what to play: --minutes M (corpus pieces and random melodies) or --score FILE ...")
        elif not _positive(self.minutes):
            raise ValueError(f"--minutes must be a number > 0, got {self.minutes}")
        elif self.part is not None:
            raise ValueError("--part chooses a part of a --score file; give --score too")
        if not _positive(self.clip_seconds):
            raise ValueError(f"--clip-seconds must be a number > 0, got {self.clip_seconds}")
        if not _positive(self.min_clip_seconds):
            raise ValueError(f"min_clip_seconds must be a number > 0, got {self.min_clip_seconds}")
        if not _positive(self.max_piece_seconds):
            raise ValueError(f"max_piece_seconds must be a number > 0, got {self.max_piece_seconds}")
        if not (math.isfinite(self.random_fraction) and 0.0 <= self.random_fraction <= 1.0):
            raise ValueError(f"random_fraction must be in [0, 1], got {self.random_fraction}")
        if int(self.identities) < 1:
            raise ValueError(f"--identities must be >= 1 (performers to use), got {self.identities}")
        if self.identity is not None and not 0 <= int(self.identity) < 2**63:
            raise ValueError(f"--identity must be an identity seed >= 0 (as in a clip.json's identity_seed), "
                             f"got {self.identity}")
        if self.split not in (None, "auto", *fmt.SPLITS):
            raise ValueError(f"--split must be one of auto, {', '.join(fmt.SPLITS)}; got {self.split!r}")
        if self.soundfont is not None:
            sf = Path(self.soundfont)
            if not sf.is_file():
                raise ValueError(f"--soundfont {sf}: " + ("not a file" if sf.exists() else "no such file")
                                 + "; give a General MIDI soundfont (.sf2, or .sf3 with --synth fluidsynth)")
            if sf.suffix.lower() not in (".sf2", ".sf3"):
                raise ValueError(f"--soundfont {sf}: a soundfont ends in .sf2 or .sf3, not {sf.suffix or 'nothing'}")
            if sf.suffix.lower() == ".sf3" and self.synth == "tinysoundfont":
                raise ValueError(f"--soundfont {sf}: TinySoundFont reads .sf2 only; use --synth fluidsynth for .sf3")
        if self.frames not in ("mp4", "jpeg"):
            raise ValueError(f"frames must be 'mp4' or 'jpeg', got {self.frames!r}")
        if self.keep_splits is not None:
            if not (Path(self.keep_splits) / fmt.MANIFEST).is_file():
                raise ValueError(f"--keep-splits {self.keep_splits}: not a letsplay dataset (no {fmt.MANIFEST}); "
                                 f"name the dataset whose pieces' splits this one keeps")
            if self.split not in (None, "auto"):
                raise ValueError(f"--keep-splits keeps another dataset's splits by piece and --split {self.split} "
                                 f"puts every clip in one split; give one")

    def resolved(self) -> SynthDatasetConfig:
        """Validated, with the audio backend, the score files' SHA-256 and the split filled in."""
        self.validate()
        from letsplay.models.data.scores import file_sha256

        return SynthDatasetConfig(**{
            **asdict(self), "synth": resolve_backend(self.synth),
            "soundfont": None if self.soundfont is None else str(Path(self.soundfont).resolve()),
            "score_files": tuple(str(f) for f in self.score_files),
            "score_sha256": tuple(file_sha256(f) for f in self.score_files),
            "split": self.split or ("test" if self.score_files else "auto"),
            "identities": 1 if self.identity is not None else int(self.identities),
        })

    def to_manifest(self) -> dict[str, Any]:
        d = {**asdict(self), "renderer_version": RENDERER_VERSION}
        if d["soundfont"] is None:  # the backend's own: as manifests written before the option read
            del d["soundfont"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # as it reads back from JSON


def _positive(x: float) -> bool:
    try:
        return math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False


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
    if cfg.score_files:
        return _plan_score_files(root, cfg, fps)
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

    return _finish_plan(clips, cfg)


def _finish_plan(clips: list[dict[str, Any]], cfg: SynthDatasetConfig) -> list[dict[str, Any]]:
    """Number the clips and give each its split (by piece, or ``cfg.split`` for all) and
    identity seed (``cfg.identity`` for all, else the dataset's identities in turn)."""
    split = cfg.split or "auto"
    splits = (fmt.split_for([c["piece"] for c in clips], cfg.seed) if split == "auto"
              else {c["piece"]: split for c in clips})
    if cfg.keep_splits is not None:  # the other dataset's pieces keep their split
        other = fmt.load_manifest(Path(cfg.keep_splits))
        kept = {c["piece"]: c["split"] for c in other["clips"]}
        splits = {p: kept.get(p, s) for p, s in splits.items()}
    ids = [int(cfg.identity)] if cfg.identity is not None else identity_seeds(cfg.seed, cfg.identities)
    for i, c in enumerate(clips):
        c["id"] = f"c{i:04d}"
        c["split"] = splits[c["piece"]]
        c["identity_seed"] = ids[i % len(ids)]
        c["score_file"] = f"scores/{_safe(c['piece'])}.json"
    return [{k: c[k] for k in ("id", "split", "piece", "start", "duration", "identity_seed", "score_file")}
            for c in clips]


def score_file_names(files: tuple[str, ...] | list[str]) -> list[str]:
    """The name each score file goes by in piece ids (``file:<name>#<part>``): its file
    name, or the path as given where two files share a name."""
    names = [Path(f).name for f in files]
    return [n if names.count(n) == 1 else str(f) for n, f in zip(names, files, strict=True)]


def load_score_files(cfg: SynthDatasetConfig) -> list[Score]:
    """The scores of ``cfg.score_files`` (ValueError for a missing, unreadable or empty file)."""
    return [file_score(f, cfg.instrument, part=cfg.part, name=n, seed=cfg.seed)
            for f, n in zip(cfg.score_files, score_file_names(cfg.score_files), strict=True)]


def _plan_score_files(root: Path, cfg: SynthDatasetConfig, fps: float) -> list[dict[str, Any]]:
    """Every given piece, whole, cut into clips of ``clip_seconds`` (a remainder shorter than
    ``min_clip_seconds`` joins the clip before it; a piece shorter than that is one clip)."""
    scores_dir = Path(root) / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    clips: list[dict[str, Any]] = []
    for sc in load_score_files(cfg):
        pid = sc.source
        fmt.write_json_atomic(scores_dir / f"{_safe(pid)}.json", sc.to_dict())
        length = max(1, round(sc.duration * fps)) / fps
        bounds = list(np.arange(0.0, length, cfg.clip_seconds)) + [length]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < cfg.min_clip_seconds:
            del bounds[-2]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            a, b = round(a * fps) / fps, round(b * fps) / fps
            if b > a:
                clips.append({"piece": pid, "start": a, "duration": round(b - a, 9)})
    return _finish_plan(clips, cfg)


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
                         SynthConfig(backend=cfg.synth, soundfont=cfg.soundfont), vib, room_seed=seed,
                         vibrato_allowed=allowed)
    perf = perform(notes, body, n_frames, video_spec)
    renderer = PerformerRenderer(body, look, perf, video_spec.width, video_spec.height)

    files = fmt.begin_clip(root, clip["id"])
    try:
        frame = np.empty((video_spec.height, video_spec.width, 3), np.uint8)
        parts = np.zeros((n_frames, video_spec.height, video_spec.width), np.uint8)  # part-label maps
        if cfg.frames == "mp4":
            with fmt.VideoWriter(files.video, video_spec, threads=threads) as vw:
                for i in range(n_frames):
                    vw.write(renderer.render(i, frame, parts[i]))
        else:
            files.frames_dir.mkdir()
            for i in range(n_frames):
                bgr = cv2.cvtColor(renderer.render(i, frame, parts[i]), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(files.frames_dir / f"{i:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        fmt.write_audio(files.audio, audio, audio_spec.sample_rate)
        inside = ((perf.instrument_points >= 0) & (perf.instrument_points <= 1)).all(axis=-1)
        fmt.write_keypoints(files.keypoints, perf.times, perf.keypoints,
                            np.ones((n_frames, N_KEYPOINTS), np.float32), perf.instrument_points,
                            instrument_point_names(inst.name), inside.astype(np.float32))
        fmt.write_parts(files.parts, parts, PART_LABELS)
        fmt.write_json_atomic(files.notes, {"notes": [[n.onset, n.duration, n.pitch, n.velocity] for n in notes]})
        np.savez_compressed(files.motion, times=perf.times, **{k: np.asarray(v) for k, v in perf.state.items()})
        manifest = {
            "format_version": fmt.FORMAT_VERSION, "id": clip["id"], "kind": "synthetic", "instrument": inst.name,
            "split": clip["split"], "identity_seed": seed, "n_frames": n_frames,
            "duration": n_frames / video_spec.fps, "frames": cfg.frames,
            "score": {"source": score.source, "piece": clip["piece"], "start": clip["start"], "qpm": score.qpm,
                      "transpose": score.transpose, "n_notes": len(notes)},
            "synth": {"backend": cfg.synth, "gm_program": inst.gm_program,
                      "soundfont": Path(SynthConfig(cfg.synth, cfg.soundfont).soundfont_path(cfg.synth)).name},
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
    # everything that can be wrong with the request is found before the folder is made
    cfg.validate()
    if int(workers) < 1:
        raise ValueError(f"--workers must be >= 1 (parallel processes), got {workers}")
    if root.exists() and not root.is_dir():
        raise fmt.DatasetError(f"--out {str(root)!r} is a file, not a folder; choose an empty or new folder")
    if cfg.score_files:
        load_score_files(cfg)  # a missing, unreadable or empty score file (parsed once: cached)
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
