"""`letsplay render | live | demo`: the engine from the command line (`export`: ``cmd_export``).

Every running command takes ``--backend auto|torch|onnxruntime|tensorrt`` and
``--performer NAME|PATH`` and prints which backend and device actually ran;
``--precision int8|fp16`` runs a reduced-precision variant of an exported folder
(onnxruntime; made by ``letsplay export onnx ... --int8 --fp16``); ``--cuda-graph``
(with ``--backend torch --compute cuda``) replays the step as a captured CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

MAX_LOOKAHEAD_MS = 2000.0  # --lookahead: more is no longer "performing along" (and live would show nothing)
VIDEO_SUFFIXES = (".mp4",)  # what the recorder writes: an MP4 container


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--performer", default=None,
                   help="a shipped performer (cello, trombone), a checkpoint .safetensors or an exported folder "
                        "(default: the shipped performer for --instrument)")
    p.add_argument("--instrument", choices=["cello", "trombone"], default=None,
                   help="pick the shipped performer for this instrument (default: cello); with --performer "
                        "it must be that performer's instrument")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default="auto",
                   help="what computes the frames (default auto: TensorRT on a GPU with tensorrt installed, "
                        "else onnxruntime -- CUDA on a GPU, else CPU -- when installed, else torch)")
    p.add_argument("--compute", default=None, choices=["cpu", "cuda"],
                   help="where the backend runs (default: cuda when a GPU is available, else cpu)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="--backend torch --compute cuda only: capture the model's step into a CUDA graph and "
                        "replay it (one launch per frame instead of one per kernel; default off)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="accept an onnxruntime provider other than the one asked for, with a warning "
                        "(default: refuse to run)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="onnxruntime inference threads, at least 1 (default: onnxruntime's choice)")
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32",
                   help="onnxruntime only: run this variant of an exported folder (--performer DIR; "
                        "made by `letsplay export onnx --int8/--fp16`; default fp32)")
    p.add_argument("--pipeline", choices=["auto", "on", "off"], default="auto",
                   help="run each frame as two halves on two threads (front: keypoints, coarse frame, UNet "
                        "encoder + GRU; back: GCN, decoder, sinks) -- more frames per second on few cores for "
                        "about half a step more latency (default auto: on for onnxruntime on a CPU of <= 2 "
                        "cores, else off)")
    p.add_argument("--lookahead", type=float, default=None, metavar="MS",
                   help=f"give the model MS of future audio, 0..{MAX_LOOKAHEAD_MS:g}; live display is delayed as "
                        f"much (a file render still covers the whole file) (default: the performer's own, what it "
                        f"was trained with: 100 ms for the shipped ones, the least that keeps their motion on the "
                        f"notes)")
    p.add_argument("--keypoints", default=None, metavar="NPZ",
                   help="write per-frame keypoints to this .npz (default: none)")
    p.add_argument("--osc", default=None, metavar="HOST:PORT",
                   help="send keypoints as OSC over UDP, one /letsplay/frame message per frame (default: none)")
    p.add_argument("--stats", default=None, metavar="JSON",
                   help="write the run's statistics to this JSON file (default: none)")


def _open(args: argparse.Namespace):
    import dataclasses

    from letsplay.realtime.backends import BackendOptions, describe, open_backend
    from letsplay.realtime.performers import performer_instrument, resolve_performer

    _check_settings(args)
    ref = resolve_performer(args.performer, args.instrument)
    if args.instrument and args.performer:
        plays = performer_instrument(ref)
        if plays is not None and plays != args.instrument:
            raise ValueError(f"--performer {args.performer} plays the {plays}, not the {args.instrument} asked for "
                             f"with --instrument; drop one of the two")
    backend = open_backend(ref, BackendOptions(
        backend=args.backend, compute=args.compute, precision=args.precision, threads=args.threads,
        cuda_graph=args.cuda_graph, allow_fallback=args.allow_fallback,
        pipeline={"auto": None, "on": True, "off": False}[args.pipeline]))
    if backend.pipeline and not args.threads:
        import torch

        torch.set_num_threads(1)  # one core per half; the CQT's torch ops must not spin on the other
    audio, video = backend.audio, backend.video
    if args.lookahead is not None:
        video = dataclasses.replace(video, lookahead_ms=float(args.lookahead))
    print(f"performer {ref.name} ({ref.path}); backend {describe(backend)}", file=sys.stderr)
    return ref, backend, audio, video


# --------------------------------------------------------------------------- checks before any work


def check_lookahead(ms: float | None) -> None:
    """Refuse a ``--lookahead`` outside 0..MAX_LOOKAHEAD_MS (None: not given)."""
    if ms is not None and not (math.isfinite(ms) and 0 <= ms <= MAX_LOOKAHEAD_MS):
        raise ValueError(f"--lookahead must be 0..{MAX_LOOKAHEAD_MS:g} ms of future audio, got {ms:g}")


def _check_settings(args: argparse.Namespace) -> None:
    """Values that make no sense, refused before anything is loaded or written."""
    check_lookahead(getattr(args, "lookahead", None))
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1 (leave it out for the default), got {threads}")


def _same_file(a: Path, b: str | os.PathLike[str] | None) -> bool:
    """True when ``a`` and ``b`` name the same file (symlinks and hard links included)."""
    if b is None:
        return False
    b = Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_outputs(args: argparse.Namespace, outputs: dict[str, tuple[str | None, tuple[str, ...]]],
                   inputs: list[str | None]) -> None:
    """Each output ``flag -> (path, allowed suffixes)``: the right extension, not an input,
    not another output, its folder exists, and nothing already there unless --overwrite.
    Runs before anything is loaded or created."""
    overwrite = getattr(args, "overwrite", False)
    seen: dict[Path, str] = {}
    for flag, (path, suffixes) in outputs.items():
        if path is None:
            continue
        p = Path(path).expanduser()
        for src in inputs:
            if src is not None and _same_file(p, src):
                raise ValueError(f"{flag} {path} is the input {src}; writing it would destroy the input: "
                                 f"choose another output name")
        if suffixes and p.suffix.lower() not in suffixes:
            raise ValueError(f"{flag} {path}: the file must end in {' or '.join(suffixes)} (that is the format "
                             f"written), e.g. {p.with_suffix(suffixes[0]).name}")
        key = p.resolve()
        if key in seen:
            raise ValueError(f"{flag} {path} is also the {seen[key]} output; give each output its own file")
        seen[key] = flag
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file name inside it")
        if not p.parent.is_dir():
            raise ValueError(f"{flag} {path}: the folder {p.parent} does not exist; create it first "
                             f"(mkdir -p {p.parent}) or choose another path")
        if (p.exists() or p.is_symlink()) and not overwrite:
            raise ValueError(f"{flag} {path} already exists; pass --overwrite to replace it (it is replaced only "
                             f"once the new file is complete) or choose another name")


def _write_json(path: str, data: dict) -> None:
    """Write a JSON file atomically (temp name in the same folder, then rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, p)


class _WholeFile:
    """A file source for ``render`` whose analysis goes past the end of the file: once the
    file is read, silence (``padding`` samples, found from the CQT's reach and the
    lookahead) follows, so the last frames' future audio exists and the video covers the
    whole audio. ``end`` (samples in the file) and ``frames`` (the frames of that much
    audio: those that start before its end) are set when the file is exhausted; the
    :class:`_UpToEnd` sink wrappers drop the padding's audio and frames past ``frames``."""

    name = "file"

    def __init__(self, inner, audio, video) -> None:
        from letsplay.models.features import CQT

        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.stats = inner.stats
        self._video = video
        self._cqt = CQT(audio)
        self._pos = 0
        self._pad_left = 0
        self.end: int | None = None
        self.frames: int | None = None

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def lost(self) -> bool:
        return False

    @property
    def finished(self) -> bool:
        return self.end is not None and self._pad_left == 0

    def _padding(self, end: int) -> int:
        """The fewest samples of silence after ``end`` that make every frame of the audio available."""
        from letsplay.models.features import frames_available

        sr, fps = self.sample_rate, self._video.fps
        self.frames = max(0, math.ceil(end / sr * fps - 1e-9))  # frames that start before the end
        lo = 0
        hi = math.ceil(self._video.lookahead_ms / 1000 * sr) + self._cqt.ahead + 2 * self._cqt.spec.hop + sr
        while lo < hi:
            mid = (lo + hi) // 2
            if frames_available(end + mid, self._cqt, self._video) >= self.frames:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def read(self, timeout: float = 0.05):
        import numpy as np

        if self.end is None:
            x, start = self.inner.read(timeout)
            if len(x):
                self._pos = start + len(x)
                return x, start
            if not self.inner.finished:
                return x, start
            self.end = self._pos
            self._pad_left = self._padding(self.end)
        k = min(self._pad_left, 4096)
        self._pad_left -= k
        start, self._pos = self._pos, self._pos + k
        return np.zeros(k, np.float32), start


class _UpToEnd:
    """Passes a sink only the audio of the file and the frames that start before its end
    (see :class:`_WholeFile`)."""

    def __init__(self, sink, src: _WholeFile) -> None:
        self.sink, self.src = sink, src

    def __repr__(self) -> str:
        return repr(self.sink)

    def open(self, audio, video) -> None:
        self.sink.open(audio, video)

    def write_audio(self, samples, start_sample: int) -> None:
        if self.src.end is not None:
            samples = samples[: max(0, self.src.end - start_sample)]
        if len(samples):
            self.sink.write_audio(samples, start_sample)

    def write_frame(self, f) -> None:
        if self.src.frames is None or f.index < self.src.frames:
            self.sink.write_frame(f)

    def close(self) -> None:
        self.sink.close()


class _Count:
    """Counts the frames that reach the sinks (stream 0)."""

    def __init__(self) -> None:
        self.n = 0

    def open(self, audio, video) -> None:
        pass

    def write_frame(self, f) -> None:
        self.n += f.stream == 0

    def write_audio(self, samples, start_sample: int) -> None:
        pass

    def close(self) -> None:
        pass


def _sinks(args: argparse.Namespace, record: str | None, partial_keypoints: bool = False):
    """The output sinks. The recording is written under a partial name and renamed when
    complete (a file already there is replaced only then); with ``partial_keypoints`` the
    keypoints go to their partial name too, for the caller to rename on success."""
    from letsplay.realtime.sinks import KeypointsNpz, Mp4Recorder, OscSink, partial_path

    sinks = []
    if args.osc:  # first: a host that does not resolve fails before any file is created
        host, _, port = args.osc.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"--osc wants HOST:PORT, got {args.osc!r}")
        sinks.append(OscSink(host or "127.0.0.1", int(port)))
    if record:
        sinks.append(Mp4Recorder(record, partial=True))
    if args.keypoints:
        sinks.append(KeypointsNpz(partial_path(args.keypoints) if partial_keypoints else args.keypoints))
    return sinks


def _finish(args: argparse.Namespace, stats: dict) -> None:
    """The run's summary line (latency only where it was measured: live runs) and --stats."""
    lat = stats["latency_ms"]
    parts = [f"{stats['frames']} frames from {stats['audio_seconds']:.2f} s of audio"]
    wall = stats.get("wall_seconds") or 0.0
    if stats.get("mode") == "render" and wall > 0:
        parts.append(f"{stats['frames'] / wall:.1f} frames/s, {stats['audio_seconds'] / wall:.2f}x real time")
    else:
        parts.append(f"{stats['fps']:.1f} fps")
    if lat.get("n", 1):
        parts.append(f"latency p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms")
    parts.append(f"dropped {stats['dropped']}, errors {stats['errors']}; backend {stats['backend']}")
    print("; ".join(parts), file=sys.stderr)
    if args.stats:
        _write_json(args.stats, stats)


RAW_HELP = ("raw rgb24 frames to stdout (a pipe or file, never a terminal), at the performer's video size and "
            "frame rate, printed to stderr at the start with the matching ffmpeg command "
            "(ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i - out.mp4)")


def _check_raw(args: argparse.Namespace) -> None:
    """--raw: refuse a terminal before any work (binary frames would garble it)."""
    if getattr(args, "raw", False) and sys.stdout.isatty():
        raise ValueError("--raw writes binary video frames to stdout, which is a terminal here: pipe it "
                         "(e.g. | ffmpeg -f rawvideo ...) or redirect it to a file")


def _raw_sink(video):
    """The stdout sink for --raw; says the frame format on stderr."""
    from letsplay.realtime.sinks import RawVideoSink, fps_fraction

    fps = fps_fraction(video.fps)
    print(f"raw video to stdout: rgb24 {video.width}x{video.height} at {fps} fps "
          f"(ffmpeg -f rawvideo -pix_fmt rgb24 -s {video.width}x{video.height} -r {fps} -i - out.mp4)",
          file=sys.stderr)
    return RawVideoSink()


def _raw_closed(args: argparse.Namespace, raw, eng) -> int:
    """The consumer of --raw went away: say so in one line; exit status 1."""
    print(f"letsplay {args.command}: the consumer closed the output after {raw.frames_written} frames; stopped "
          f"({eng.stats.frames} frames computed)", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- render


def _add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="an audio file (wav, flac, ogg, mp3, ...)")
    p.add_argument("-o", "--out", default=None, metavar="MP4",
                   help="write the video (H.264 + AAC, ending in .mp4) here, as long as the audio; it is written "
                        "as NAME.partial.mp4 and renamed when complete (default: none)")
    p.add_argument("--raw", action="store_true", help=RAW_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing -o / --keypoints / --stats files, once the new ones are complete "
                        "(default: refuse to touch them)")
    _common(p)


def _run_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from letsplay.models.audio import audio_info
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sinks import CallbackSink
    from letsplay.realtime.sources import FileSource

    if not (args.out or args.raw or args.keypoints or args.osc):
        raise ValueError("nothing to write: give -o OUT.mp4, --raw, --keypoints or --osc")
    _check_raw(args)
    _check_settings(args)
    _check_outputs(args, {"-o": (args.out, VIDEO_SUFFIXES), "--keypoints": (args.keypoints, (".npz",)),
                          "--stats": (args.stats, ())}, [args.audio, args.performer])
    info = audio_info(args.audio)
    _, backend, audio, video = _open(args)
    sinks = _sinks(args, args.out, partial_keypoints=True)
    raw = _raw_sink(video) if args.raw else None
    if raw is not None:
        sinks.append(raw)
    bar = tqdm(total=round(info["seconds"] * video.fps), unit="frame", desc="render",
               disable=not sys.stderr.isatty())
    count = _Count()
    sinks += [CallbackSink(lambda f: bar.update(1)), count]
    # The analysis runs on past the end of the file (silence) so that every frame of the audio
    # gets its lookahead; the sinks see the file's audio and its frames only.
    src = _WholeFile(FileSource(args.audio, audio.sample_rate), audio, video)
    eng = Engine(backend, audio, video, [src], [_UpToEnd(s, src) for s in sinks], EngineConfig(realtime=False))
    if raw is not None:
        raw.on_broken = eng.request_stop  # the reader went away: compute no more frames
    eng.start()  # on its own thread: Ctrl-C lands here, never inside an encoder call
    interrupted = False
    try:
        try:
            while eng.running:  # sleep, not join: a join interrupted by Ctrl-C upsets the interpreter's exit
                time.sleep(0.1)
        except KeyboardInterrupt:
            interrupted = True
        problem = _render_problem(eng, src, count, interrupted, raw)
        for s in sinks:
            if problem and hasattr(s, "mark_incomplete"):
                s.mark_incomplete(problem)  # finalised (playable) but left under its partial name
    finally:
        eng.stop()  # (on Ctrl-C too) the loop ends between frames and the recording is finalised
        bar.close()
    problem = problem or _settle_outputs(args, sinks)
    stats = eng.stats_dict()
    stats["frames"] = count.n
    stats["audio_seconds"] = round((src.end if src.end is not None else eng.stats.audio_samples) / audio.sample_rate, 4)
    if problem:
        if args.stats:
            _write_json(args.stats, stats)
        files = bool(args.out or args.keypoints)
        if raw is not None and raw.broken:
            if files:
                print(f"letsplay render: {problem}; {_left_behind(args, sinks)}", file=sys.stderr)
            return _raw_closed(args, raw, eng)
        from letsplay.ui.cli import _user_errors

        if eng.error is not None and isinstance(eng.error, _user_errors()):  # bad input: say it as such
            print(f"letsplay render: error: {eng.error}" + (f"; {_left_behind(args, sinks)}" if files else ""),
                  file=sys.stderr)
            return 2
        print(f"letsplay render: {problem}; {_left_behind(args, sinks)}", file=sys.stderr)
        return 130 if interrupted else 1
    _finish(args, stats)
    _say_written(args, sinks, count.n)
    if raw is not None and raw.broken:
        return _raw_closed(args, raw, eng)
    return 0


def _render_problem(eng, src: _WholeFile, count: _Count, interrupted: bool, raw) -> str | None:
    """Why a finished render is not complete (None when it is)."""
    if interrupted:
        return "interrupted"
    if eng.error is not None:
        return f"the render stopped: {type(eng.error).__name__}: {eng.error}"
    if raw is not None and raw.broken:
        return "the reader of --raw went away"
    if eng.stats.errors:
        return f"{eng.stats.errors} frames failed in the backend and are missing (see the log above)"
    if src.frames == 0:
        return f"the audio is too short for one video frame ({src.end} samples)"
    for s in eng.sinks:
        err = getattr(s.sink, "error", None)
        if err is not None:
            return f"writing {s.sink!r} failed: {err}"
    if src.frames is None or count.n < src.frames:
        return f"only {count.n} of {src.frames} frames were rendered"
    return None


def _settle_outputs(args: argparse.Namespace, sinks: list) -> str | None:
    """After a complete render: the recording was renamed by its recorder; give the
    keypoints file its final name. Returns what went wrong, if anything."""
    from letsplay.realtime.sinks import KeypointsNpz, Mp4Recorder

    for s in sinks:
        if isinstance(s, Mp4Recorder) and (s.kept_partial is not None or not s.path.is_file()):
            return f"finishing the video {s.path} failed (see the log above)"
        if isinstance(s, KeypointsNpz):
            if not s.path.is_file():
                return f"writing the keypoints {args.keypoints} failed (see the log above)"
            os.replace(s.path, args.keypoints)
    return None


def _left_behind(args: argparse.Namespace, sinks: list) -> str:
    """Where a failed or interrupted render's partial files are (and that nothing else changed)."""
    from letsplay.realtime.sinks import KeypointsNpz, Mp4Recorder

    kept = []
    for s in sinks:
        if isinstance(s, Mp4Recorder) and s.kept_partial is not None:
            kept.append(f"the partial video (playable up to there) is in {s.kept_partial}")
        if isinstance(s, KeypointsNpz) and s.path.is_file():
            kept.append(f"the partial keypoints are in {s.path}")
    finals = [p for p in (args.out, args.keypoints) if p]
    unchanged = f"nothing was written to {' or '.join(finals)}" if finals else ""
    return "; ".join([*kept, unchanged] if unchanged else kept) or "nothing was written"


def _say_written(args: argparse.Namespace, sinks: list, frames: int) -> None:
    """One line per output: where it went and how much."""
    from letsplay.realtime.sinks import OscSink

    if getattr(args, "out", None):
        print(f"wrote {args.out} ({frames} frames)", file=sys.stderr)
    if args.keypoints:
        print(f"wrote {args.keypoints} (keypoints of {frames} frames)", file=sys.stderr)
    for s in sinks:
        if isinstance(s, OscSink):
            print(f"sent {s.sent} OSC messages ({s.address}) to {s.host}:{s.port}"
                  + (f", {s.errors} failed to send" if s.errors else ""), file=sys.stderr)
    if args.stats:
        print(f"wrote the statistics to {args.stats}", file=sys.stderr)


# --------------------------------------------------------------------------- live / demo


def _add_live(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", dest="input", default=None, metavar="NAME",
                   help="input device: name (a unique substring) or index, see `letsplay devices` "
                        "(default: the system default)")
    p.add_argument("--record", default=None, metavar="MP4",
                   help="record what is shown (and heard) to this .mp4; written as NAME.partial.mp4 and renamed "
                        "when the recording ends (default: no recording)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --record / --keypoints / --stats files, once the new ones are complete "
                        "(default: refuse to touch them)")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this much audio (default: run until Ctrl-C or the window is closed)")
    p.add_argument("--no-window", action="store_true",
                   help="headless: no Qt window even when a display exists (default: a window when there is a "
                        "display)")
    p.add_argument("--kiosk", action="store_true",
                   help="fullscreen, no chrome, starts by itself (installations; default: a normal window)")
    _common(p)


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _run_headless(args: argparse.Namespace, eng) -> dict:
    eng.start(args.seconds)
    last = 0.0
    try:
        while eng.running:
            time.sleep(0.1)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                s = eng.stats.snapshot()
                lost = "  INPUT DEVICE LOST (retrying)" if s["device_lost"] else ""
                lat = f"  latency p95 {s['latency_ms']['p95']:6.1f} ms" if s["latency_ms"]["n"] else ""
                print(f"\r{s['frames']:6d} frames  {s['fps']:5.1f} fps{lat}"
                      f"  dropped {s['dropped']}  level {s['input_level_dbfs']:6.1f} dBFS{lost}   ",
                      end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        eng.stop()
        print(file=sys.stderr)
    if eng.error is not None:
        raise eng.error
    return eng.stats_dict()


def _run_live(args: argparse.Namespace) -> int:
    from letsplay.realtime.engine import Engine
    from letsplay.realtime.sinks import Mp4Recorder
    from letsplay.realtime.sources import MicSource

    _check_seconds(args.seconds)
    _check_settings(args)
    _check_outputs(args, {"--record": (args.record, VIDEO_SUFFIXES), "--keypoints": (args.keypoints, (".npz",)),
                          "--stats": (args.stats, ())}, [args.performer])
    _, backend, audio, video = _open(args)
    src = MicSource(audio.sample_rate, device=args.input)
    sinks = _sinks(args, args.record)
    eng = Engine(backend, audio, video, src, sinks)
    if _has_display() and not args.no_window:
        from letsplay.ui.window import run_window

        return run_window(eng, kiosk=args.kiosk, record_path=args.record)
    stats = _run_headless(args, eng)
    for s in sinks:
        if isinstance(s, Mp4Recorder) and s.kept_partial is not None:
            print(f"letsplay live: the recording failed ({s.error or 'see the log above'}); what was recorded is in "
                  f"{s.kept_partial}; {args.record} was not written", file=sys.stderr)
            return 1
    _finish(args, stats)
    if args.record:
        if not Path(args.record).is_file():
            print(f"letsplay live: nothing was recorded ({stats['frames']} frames); {args.record} was not written",
                  file=sys.stderr)
            return 1
        print(f"recorded {args.record} ({stats['frames']} frames)", file=sys.stderr)
    _say_written(args, [s for s in sinks if not isinstance(s, Mp4Recorder)], stats["frames"])
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", default=None, metavar="MP4",
                   help="record to this mp4 (default without a display: demo.mp4)")
    p.add_argument("--seconds", type=float, default=None,
                   help="play only this many seconds of the demo piece (a positive number)")
    p.add_argument("--no-window", action="store_true", help="headless even when a display exists")
    p.add_argument("--no-play", action="store_true", help="do not play the music to the speakers")
    p.add_argument("--kiosk", action="store_true", help="fullscreen, no chrome (installations)")
    p.add_argument("--raw", action="store_true", help=RAW_HELP + "; headless, and no demo.mp4 unless --record")
    _common(p)


def _check_seconds(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--seconds must be a positive number of seconds, got {seconds:g}")


def _run_demo(args: argparse.Namespace) -> int:
    """In a window, or played to the speakers, the demo runs live (real-time pace, stale
    frames dropped). Headless and not played, nobody watches it happen: it runs like
    ``render`` and computes every frame, so the recording holds fps x its audio length
    frames whatever the machine's load."""
    _check_seconds(args.seconds)
    _check_raw(args)
    from letsplay.realtime.demo import demo_audio
    from letsplay.realtime.engine import Engine, EngineConfig
    from letsplay.realtime.sources import ArraySource, output_available

    ref, backend, audio, video = _open(args)
    instrument = args.instrument or ("trombone" if "trombone" in ref.name else "cello")
    x = demo_audio(instrument, audio.sample_rate, args.seconds)
    window = _has_display() and not args.no_window and not args.raw
    record = args.record or (None if window or args.raw else "demo.mp4")
    play = not args.no_play and output_available()
    live = window or play
    src = ArraySource(x, audio.sample_rate, realtime=live, play=play)
    sinks = _sinks(args, record)
    raw = _raw_sink(video) if args.raw else None
    if raw is not None:
        sinks.append(raw)
    eng = Engine(backend, audio, video, src, sinks, EngineConfig(realtime=live))
    if raw is not None:
        raw.on_broken = eng.request_stop
    how = ", playing to the speakers" if play else "" if live else ", rendering every frame"
    print(f"demo: {instrument}, {len(x) / audio.sample_rate:.1f} s{how}", file=sys.stderr)
    if window:
        from letsplay.ui.window import run_window

        return run_window(eng, kiosk=args.kiosk, record_path=record)
    stats = _run_headless(args, eng)
    _finish(args, stats)
    if raw is not None and raw.broken:
        return _raw_closed(args, raw, eng)
    if record:
        path = Path(record)
        if not path.is_file():
            print(f"letsplay demo: error: no recording was written to {path} ({stats['frames']} frames rendered)",
                  file=sys.stderr)
            return 1
        print(f"recorded the demo to {path.resolve()}", file=sys.stderr)
    return 0


COMMANDS = [
    ("demo", "built-in music and the shipped performer: a window, or demo.mp4 without a display",
     _add_demo, _run_demo),
    ("live", "render a live input device (microphone) as it plays", _add_live, _run_live),
    ("render", "render an audio file to mp4 / keypoints as fast as possible", _add_render, _run_render),
]
