"""`letsplay render | live | export` never lose what a user has and never write something
wrong silently: every refusal is one line on stderr with a non-zero exit, made before
anything is loaded or created; a complete output replaces an existing file only with
--overwrite; an interrupted or failed render leaves its partial files under partial names;
a file render covers the whole audio whatever the lookahead.

Through the real entry point, in process (``letsplay.ui.cli.main``), on 1.5 s of audio and
the tiny random performer with the torch backend."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import music_signal

from letsplay.ui.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 44100
SECONDS = 1.5
FPS = 30
OLD_VIDEO = b"the user's complete video"
OLD_KEYPOINTS = b"the user's keypoints"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder as a user has it: the source audio (wav and flac), a complete video, a
    keypoints file, statistics and an earlier export."""
    x = music_signal(SECONDS, seed=5)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    sf.write(tmp_path / "a.flac", x, SR)
    (tmp_path / "old.mp4").write_bytes(OLD_VIDEO)
    (tmp_path / "old.npz").write_bytes(OLD_KEYPOINTS)
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.wav")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    return tmp_path


def snapshot(d: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(d.rglob("*"))}


def run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# (argv with {d} = the work folder, fragment of the one stderr line)
REFUSED = [
    # the output is the input
    (["render", "{d}/a.wav", "-o", "{d}/a.wav"], "is the input"),
    (["render", "{d}/a.flac", "-o", "{d}/a.flac"], "is the input"),
    (["render", "{d}/a.wav", "-o", "{d}/link.mp4"], "is the input"),  # a symlink to it
    (["render", "{d}/a.wav", "--keypoints", "{d}/a.wav"], "is the input"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--stats", "{d}/a.wav"], "is the input"),
    # existing files need --overwrite
    (["render", "{d}/a.wav", "-o", "{d}/old.mp4"], "--overwrite"),
    (["render", "{d}/a.wav", "--keypoints", "{d}/old.npz"], "--overwrite"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--stats", "{d}/old.json"], "--overwrite"),
    (["live", "--record", "{d}/old.mp4"], "--overwrite"),
    (["live", "--keypoints", "{d}/old.npz"], "--overwrite"),
    # export folders
    (["export", "onnx", "--out", "{d}/mine"], "not empty"),
    (["export", "onnx", "--out", "{d}/export"], "--overwrite"),
    (["export", "onnx", "--out", "{d}/old.mp4"], "is a file"),
    (["export", "onnx", "--out", "{d}/new", "--threads", "0"], "--threads"),
    # lookahead
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--lookahead", "5000"], "--lookahead must be 0..2000"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--lookahead", "-1"], "--lookahead must be 0..2000"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--lookahead", "nan"], "--lookahead must be 0..2000"),
    (["live", "--lookahead", "5000"], "--lookahead must be 0..2000"),
    # extensions
    (["render", "{d}/a.wav", "-o", "{d}/out.wav"], "must end in .mp4"),
    (["render", "{d}/a.wav", "-o", "{d}/out.avi"], "must end in .mp4"),
    (["render", "{d}/a.wav", "-o", "{d}/out.xyz"], "must end in .mp4"),
    (["live", "--record", "{d}/take.avi"], "must end in .mp4"),
    (["render", "{d}/a.wav", "--keypoints", "{d}/kp.json"], "must end in .npz"),
    # contradictions
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--instrument", "trombone"], "plays the cello"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--threads", "-3"], "--threads must be at least 1"),
    (["render", "{d}/a.wav", "-o", "{d}/n.mp4", "--threads", "0"], "--threads must be at least 1"),
    (["live", "--threads", "0"], "--threads must be at least 1"),
    # no folder
    (["render", "{d}/a.wav", "-o", "{d}/no/such/out.mp4"], "does not exist"),
]


@pytest.mark.parametrize(("argv", "fragment"), REFUSED, ids=[" ".join(a[:1] + a[2:]).replace("{d}/", "")
                                                             for a, _ in REFUSED])
def test_refused_in_one_line_before_any_work(work, tiny_ckpt, capsys, argv, fragment):
    before = snapshot(work)
    args = [a.format(d=work) for a in argv]
    if args[0] == "export":
        args += ["--checkpoint", tiny_ckpt]
    else:
        args += ["--performer", tiny_ckpt, "--backend", "torch"]
    rc, err = run(capsys, args)
    assert rc == 2
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith(f"letsplay {args[0]}: error: ")
    assert "backend" not in err  # refused before the performer was opened
    assert snapshot(work) == before  # nothing created, nothing changed


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("lookahead", [0, 200])
def test_render_covers_the_whole_audio_whatever_the_lookahead(work, tiny_ckpt, capsys, lookahead):
    before = snapshot(work)
    rc, err = run(capsys, ["render", work / "a.wav", "-o", work / "v.mp4", "--keypoints", work / "kp.npz",
                           "--performer", tiny_ckpt, "--backend", "torch", "--lookahead", str(lookahead)])
    assert rc == 0, err
    n = round(SECONDS * FPS)
    assert decoded_frames(work / "v.mp4") == n
    z = np.load(work / "kp.npz")
    assert list(z["index"]) == list(range(n))
    assert json.loads(str(z["spec"]))["video"]["lookahead_ms"] == lookahead
    assert f"wrote {work / 'v.mp4'} ({n} frames)" in err
    assert "latency" not in err and "frames/s" in err  # an offline render has no latency to report
    assert set(snapshot(work)) - set(before) == {"v.mp4", "kp.npz"}  # no partial or temp files left


def test_overwrite_replaces_only_with_a_complete_file(work, tiny_ckpt, capsys):
    rc, err = run(capsys, ["render", work / "a.flac", "-o", work / "old.mp4", "--keypoints", work / "old.npz",
                           "--stats", work / "old.json", "--overwrite", "--performer", tiny_ckpt, "--backend", "torch"])
    assert rc == 0, err
    assert decoded_frames(work / "old.mp4") == round(SECONDS * FPS)
    assert len(np.load(work / "old.npz")["index"]) == round(SECONDS * FPS)
    assert json.loads((work / "old.json").read_text())["frames"] == round(SECONDS * FPS)
    assert not list(work.glob("*partial*")) and not list(work.glob(".*"))


def test_keypoints_and_osc_only_runs_say_what_they_wrote(work, tiny_ckpt, capsys):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    try:
        rc, err = run(capsys, ["render", work / "a.wav", "--keypoints", work / "kp.npz", "--osc",
                               f"127.0.0.1:{port}", "--performer", tiny_ckpt, "--backend", "torch"])
    finally:
        rx.close()
    assert rc == 0, err
    n = round(SECONDS * FPS)
    assert f"wrote {work / 'kp.npz'} (keypoints of {n} frames)" in err
    assert f"sent {n} OSC messages (/letsplay/frame) to 127.0.0.1:{port}" in err


def _patch_backend(monkeypatch, on_step):
    """The real torch backend, with ``on_step(call_number)`` run before each step."""
    import letsplay.realtime.backends as backends

    real_open = backends.open_backend

    def open_backend(*args, **kwargs):
        backend = real_open(*args, **kwargs)
        real_step, calls = backend.step, [0]

        def step(feeds):
            calls[0] += 1
            on_step(calls[0])
            return real_step(feeds)

        backend.step = step
        return backend

    monkeypatch.setattr(backends, "open_backend", open_backend)


def _assert_partial_kept(work: Path, err: str, max_frames: int) -> None:
    assert (work / "old.mp4").read_bytes() == OLD_VIDEO  # the complete file is untouched
    assert (work / "old.npz").read_bytes() == OLD_KEYPOINTS
    partial = work / "old.partial.mp4"
    assert str(partial) in err and str(work / "old.partial.npz") in err
    assert 0 < decoded_frames(partial) < max_frames  # finalised: plays up to the interruption
    assert 0 < len(np.load(work / "old.partial.npz")["index"]) < max_frames
    assert {p.name for p in work.iterdir()} == {"a.wav", "a.flac", "old.mp4", "old.npz", "old.json", "link.mp4",
                                                "export", "mine", "old.partial.mp4", "old.partial.npz"}


def test_ctrl_c_keeps_the_partial_render_under_its_partial_name(work, tiny_ckpt, capsys, monkeypatch):
    def interrupt(call: int) -> None:
        if call == 10:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: KeyboardInterrupt in the main thread

    _patch_backend(monkeypatch, interrupt)
    rc, err = run(capsys, ["render", work / "a.wav", "-o", work / "old.mp4", "--keypoints", work / "old.npz",
                           "--overwrite", "--performer", tiny_ckpt, "--backend", "torch"])
    assert rc == 130
    assert "letsplay render: interrupted" in err
    _assert_partial_kept(work, err, round(SECONDS * FPS))


def test_failing_backend_keeps_the_partial_render_and_fails(work, tiny_ckpt, capsys, monkeypatch):
    def fail(call: int) -> None:
        if call > 20:
            raise RuntimeError("simulated GPU error")

    _patch_backend(monkeypatch, fail)
    rc, err = run(capsys, ["render", work / "a.wav", "-o", work / "old.mp4", "--keypoints", work / "old.npz",
                           "--overwrite", "--performer", tiny_ckpt, "--backend", "torch"])
    assert rc == 1
    assert "frames failed in the backend" in err
    _assert_partial_kept(work, err, round(SECONDS * FPS))


def test_help_states_every_option_and_its_default(capsys):
    for cmd in ("render", "live", "export"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "--overwrite" in out
        if cmd != "export":
            assert "default auto: TensorRT on a GPU" in out and "default: the performer's" in out
    from letsplay.ui.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for cmd in ("render", "live", "export"):
        for action in sub[cmd]._actions:
            if action.dest in ("help", "raw"):
                continue
            assert action.help, f"{cmd} {action.option_strings or action.dest} has no help"
            if action.option_strings:
                assert "default" in action.help or action.required, f"{cmd} {action.option_strings}: no default"


def test_recorder_writes_a_partial_name_until_complete(tmp_path):
    """Mp4Recorder(partial=True), what the commands use: the file at the final name is
    untouched while recording and after an incomplete one; a complete one replaces it.
    An earlier partial file is never reused; a recording of nothing leaves no file."""
    from letsplay.models.spec import AudioSpec, VideoSpec
    from letsplay.realtime.sinks import FrameOut, Mp4Recorder

    video = VideoSpec(fps=30, height=32, width=32)
    final, earlier = tmp_path / "take.mp4", tmp_path / "take.partial.mp4"
    final.write_bytes(OLD_VIDEO)
    earlier.write_bytes(b"an earlier partial take")

    def record(incomplete: bool) -> Mp4Recorder:
        rec = Mp4Recorder(final, partial=True)
        rec.open(AudioSpec(), video)
        assert rec.writing_path == tmp_path / "take.partial-2.mp4"
        for i in range(10):
            rec.write_audio(np.zeros(1470, np.float32), i * 1470)
            rec.write_frame(FrameOut(i, i / 30, np.full((32, 32, 3), 8 * i, np.uint8), np.zeros((67, 2), np.float32)))
        assert final.read_bytes() == OLD_VIDEO
        if incomplete:
            rec.mark_incomplete("stopped early")
        rec.close()
        return rec

    rec = record(incomplete=True)
    assert final.read_bytes() == OLD_VIDEO and rec.kept_partial == tmp_path / "take.partial-2.mp4"
    assert decoded_frames(rec.kept_partial) == 10
    rec.kept_partial.unlink()
    rec = record(incomplete=False)
    assert rec.kept_partial is None and decoded_frames(final) == 10
    assert earlier.read_bytes() == b"an earlier partial take"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.mp4", "take.partial.mp4"]
    empty = Mp4Recorder(tmp_path / "none.mp4", partial=True)
    empty.open(AudioSpec(), video)
    empty.close()
    assert not list(tmp_path.glob("none*"))
