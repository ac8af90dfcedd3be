"""The Qt window (offscreen): frames reach the view, statistics move, start / stop /
record / shortcuts work, a missing input device is a message (not a crash), and a slow
model never slows the window's repaints.

Every engine here runs a tiny random Performer over a synthetic signal (ArraySource,
real-time pace), so no shipped performer or audio device is needed.
"""

import logging
import re
import threading

import av
import numpy as np
import pytest
import torch
from helpers import music_signal

pytest.importorskip("PyQt6.QtWidgets", reason="PyQt6 is not installed (pip install pyqt6)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtGui import QImage  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402

from letsplay.models.performer import Performer  # noqa: E402
from letsplay.models.presets import preset  # noqa: E402
from letsplay.models.spec import VideoSpec  # noqa: E402
from letsplay.realtime.backends import TorchBackend  # noqa: E402
from letsplay.realtime.engine import Engine, EngineConfig  # noqa: E402
from letsplay.realtime.sinks import CallbackSink, Mp4Recorder  # noqa: E402
from letsplay.realtime.sources import ArraySource, MicSource  # noqa: E402
from letsplay.ui import window as window_mod  # noqa: E402
from letsplay.ui.window import LetsplayWindow  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 44100
WAIT_MS = 20000  # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def signal():
    return np.tile(music_signal(3.0, seed=3), 12)  # 36 s: no run here reaches its end


class GatedBackend(TorchBackend):
    """A model whose steps stop at a gate the test closes: however long a step takes, the
    window must not notice."""

    def __init__(self, p):
        super().__init__(p)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()  # a step is stuck at the closed gate

    def step(self, feeds):
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(60)  # a failed test must not hang the engine thread for ever
            self.waiting.clear()
        return super().step(feeds)


def make_engine(performer, signal, sinks=(), backend=None, views=False, source=None):
    b = backend or TorchBackend(performer)
    src = source or ArraySource(signal, SR, realtime=True, block=735)
    return Engine(b, performer.cfg.audio, performer.cfg.video, src, list(sinks), EngineConfig(views=views))


@pytest.fixture
def make_window(qtbot, performer, signal):
    made = []

    def make(*, sinks=(), backend=None, views=False, source=None, **kw):
        eng = make_engine(performer, signal, sinks, backend, views, source)
        if source is None:  # the demo-like input can be played again (Stop, Start)
            kw.setdefault("source_factory", lambda: ArraySource(signal, SR, realtime=True, block=735))
        w = LetsplayWindow(eng, **kw)
        qtbot.addWidget(w)
        if not w.kiosk:
            w.show()
        assert QTest.qWaitForWindowExposed(w, 5000)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()  # stops the engine, finalises recordings


def wait_frames(qtbot, w, n, timeout=WAIT_MS):
    """Until the window shows a frame of index >= n of the current run."""
    eng = w.engine
    qtbot.waitUntil(lambda: w.shown is not None and eng.stats.frames > 0 and w.shown.index >= n, timeout=timeout)


def activate(w):
    """Make ``w`` the active window: window shortcuts only reach the active one."""
    w.activateWindow()
    assert QTest.qWaitForWindowActive(w, 5000)


def qimage_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    h, w = img.height(), img.width()
    buf = np.frombuffer(img.constBits().asstring(img.sizeInBytes()), np.uint8)
    return buf.reshape(h, img.bytesPerLine())[:, : 3 * w].reshape(h, w, 3).copy()


def read_mp4_frames(path):
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(c.streams.video[0])]


# --------------------------------------------------------------------------- frames & stats


def test_frames_reach_the_view(make_window, qtbot):
    got = {}
    w = make_window(sinks=[CallbackSink(lambda f: got.__setitem__(f.index, f))])
    assert w.start()
    wait_frames(qtbot, w, 8)
    # everything below runs on the UI thread between two display ticks: the frame on
    # screen cannot change meanwhile, however fast the engine goes
    f = w.shown
    assert f is not None and f.index in got
    assert np.array_equal(f.frame, got[f.index].frame)  # the engine's frame, untouched
    assert f.frame.std() > 0  # a real picture, not a flat fill
    # the view's image is exactly the frame
    assert np.array_equal(qimage_rgb(w.view.image), f.frame)
    # and the screen shows it: sample the painted widget at every source pixel's centre
    shot = qimage_rgb(w.view.grab().toImage())
    r = w.view.image_rect()
    H, W, _ = f.frame.shape
    assert r.width() > 4 * W  # scaled up to the view
    assert abs(r.width() / r.height() - W / H) < 0.02  # aspect kept
    ys = (r.y() + (np.arange(H) + 0.5) * r.height() / H).astype(int)
    xs = (r.x() + (np.arange(W) + 0.5) * r.width() / W).astype(int)
    painted = shot[ys][:, xs].astype(int)
    diff = np.abs(painted - f.frame.astype(int))
    assert diff.mean() < 3 and diff.max() <= 24, (diff.mean(), diff.max())


def test_statistics_update(make_window, qtbot):
    w = make_window()
    assert w.fps_label.text() == "— fps" and w.frames_label.text() == "0 frames"
    assert w.start()
    wait_frames(qtbot, w, 10)
    qtbot.waitUntil(lambda: re.fullmatch(r"\d+\.\d fps", w.fps_label.text()) is not None, timeout=WAIT_MS)
    assert float(w.fps_label.text().split()[0]) > 0
    qtbot.waitUntil(lambda: re.fullmatch(r"latency p95 \d+ ms", w.latency_label.text()) is not None,
                    timeout=WAIT_MS)
    assert re.fullmatch(r"\d+ frames", w.frames_label.text()) and w.frames_label.text() != "0 frames"
    assert re.fullmatch(r"dropped \d+", w.dropped_label.text())
    assert re.fullmatch(r"-?\d+ dBFS", w.level_label.text())  # the synthetic music is loud enough
    assert w.level_meter.db > w.level_meter.FLOOR_DB
    first = w.frames_label.text()
    qtbot.waitUntil(lambda: w.frames_label.text() != first, timeout=WAIT_MS)  # it keeps moving
    assert w.state_label.text() == "DEMO"
    assert w.windowTitle() == "letsplay — demo — cello"


# --------------------------------------------------------------------------- controls


def test_start_stop_start_runs_again(make_window, qtbot):
    w = make_window()
    assert w.start() and w.state == "running" and w.start_btn.isChecked()
    first = w.engine
    wait_frames(qtbot, w, 3)
    w.toggle_running()
    assert w.state == "stopped" and not first.running and not w.start_btn.isChecked()
    assert "stopped" in w.windowTitle()
    assert w.message.isVisible() and "Space" in w.message.text()
    w.toggle_running()  # a new run: a new engine, same backend
    assert w.state == "running" and w.engine is not first and w.engine.backend is first.backend
    assert not w.message.isVisible()
    wait_frames(qtbot, w, 3)


def test_record_writes_an_mp4_across_runs(make_window, qtbot, tmp_path):
    w = make_window()
    assert w.start()
    wait_frames(qtbot, w, 2)
    out = w.start_recording(tmp_path / "take.mp4")
    assert out == tmp_path / "take.mp4"
    assert w.windowTitle().endswith("— recording") and w.record_btn.isChecked()
    assert w.path_label.toolTip() == str(out)
    n0 = w.engine.stats.frames
    qtbot.waitUntil(lambda: w.engine.stats.frames >= n0 + 12, timeout=WAIT_MS)
    w.stop()  # a pause: the recording goes on with the next run
    assert w._session.recorder is not None
    w.start()
    n1 = w.engine.stats.frames
    qtbot.waitUntil(lambda: w.engine.stats.frames >= n1 + 12, timeout=WAIT_MS)
    rec = w._session.recorder
    assert w.stop_recording() == out
    assert not w.record_btn.isChecked() and "recording" not in w.windowTitle()
    times = read_mp4_frames(out)
    assert len(times) == rec.frames_written >= 24
    assert all(b > a for a, b in zip(times, times[1:], strict=False))  # one timeline, no overlap
    # the next take never overwrites this one
    again = w.start_recording(tmp_path / "take.mp4")
    assert again == tmp_path / "take-2.mp4"
    w.stop_recording()


def test_record_path_from_the_command_line_is_finalised_on_close(make_window, qtbot, tmp_path):
    path = tmp_path / "cli.mp4"
    w = make_window(sinks=[Mp4Recorder(path)], record_path=path)  # what `letsplay live --record` builds
    assert w._session.recording_path == path and "recording" in w.windowTitle()
    assert w.start()
    wait_frames(qtbot, w, 10)
    w.close()
    assert not w.engine.running and w.exit_code == 0
    assert len(read_mp4_frames(path)) >= 5


def test_bad_record_folder_is_a_message(make_window, qtbot, tmp_path):
    w = make_window()
    assert w.start()
    assert w.start_recording(tmp_path / "missing" / "x.mp4") is None
    assert w.message.isVisible() and "does not exist" in w.message.text()
    assert not w.record_btn.isChecked() and w.state == "running"


def test_lookahead_and_performer_switch(make_window, qtbot, tmp_path, performer):
    w = make_window()
    assert w.start()
    wait_frames(qtbot, w, 2)
    first = w.engine
    w.set_lookahead(120)
    assert w.engine is not first and w.engine.video.lookahead_ms == 120 and w.state == "running"
    assert w.lookahead.value() == 120 and w.lookahead_label.text() == "120 ms"
    wait_frames(qtbot, w, 2)
    # same specs: switched inside the running engine, no new run
    torch.manual_seed(1)
    other = Performer(preset("tiny", instrument="trombone")).eval()
    ckpt = tmp_path / "trombone.safetensors"
    other.save(ckpt)
    eng, old = w.engine, w.engine.backend
    w.set_performer(str(ckpt))  # loads on a thread, like the picker's file dialog
    qtbot.waitUntil(lambda: eng.backend is not old, timeout=WAIT_MS)
    assert w.engine is eng and eng.running
    assert "trombone" in w.windowTitle() and w.performer_combo.itemText(0) == "trombone"
    # other frame size: a new run with the new specs
    big = Performer(preset("tiny", video=VideoSpec(height=48, width=48))).eval()
    w.apply_backend(TorchBackend(big), "big")
    assert w.engine is not eng and w.engine.video.height == 48 and w.engine.video.lookahead_ms == 120
    qtbot.waitUntil(lambda: w.shown is not None and w.shown.frame.shape == (48, 48, 3), timeout=WAIT_MS)


def test_unknown_performer_is_a_message(make_window, qtbot):
    w = make_window()
    w.set_performer("no-such-performer")
    qtbot.waitUntil(lambda: "Cannot load performer" in (w.message_text() or ""), timeout=WAIT_MS)


# --------------------------------------------------------------------------- no device


def test_no_input_device_is_a_message_not_a_crash(make_window, qtbot):
    src = MicSource(SR, device="no-such-device-xyz-123")
    w = make_window(source=src)
    assert w.start() is False
    assert w.state == "no-device"
    assert w.message.isVisible()
    text = w.message.text()
    assert "input" in text and "no-such-device-xyz-123" in text
    assert "no input device" in w.windowTitle() and w.windowTitle().startswith("letsplay — live")
    assert not w.engine.running
    qtbot.wait(100)  # the display timer goes on without an engine run
    assert w.message.isVisible()
    w.close()
    assert w.exit_code == 2


def test_no_devices_at_all(make_window, qtbot, monkeypatch):
    monkeypatch.setattr(window_mod, "list_devices", lambda: [])
    w = make_window(source=MicSource(SR, device="no-such-device-xyz-123"))
    assert w.input_combo.itemText(w.input_combo.count() - 1) == "no input devices found"
    assert not w.start()
    assert w.message.text().startswith("No audio input device found.")


def test_kiosk_retries_without_a_device_and_esc_leaves(make_window, qtbot):
    w = make_window(source=MicSource(SR, device="no-such-device-xyz-123"), kiosk=True)
    assert w.kiosk and w.isFullScreen() and not w.toolbar.isVisible() and not w.statusBar().isVisible()
    assert not w.start()
    assert "Retrying" in w.message.text() and w._retry.isActive()
    assert w.geometry() == w.screen().geometry()  # covers the screen, window manager or not
    activate(w)
    qtbot.keyClick(w, Qt.Key.Key_Escape)
    assert not w.kiosk and w.toolbar.isVisible() and not w._retry.isActive()
    assert w.geometry() != w.screen().geometry()


def test_kiosk_retries_all_night_without_flooding_the_log(make_window, caplog):
    """Kiosk mode retries a missing device every 2 s: the failure is logged once at
    WARNING, then at most once a minute at INFO with a count (an installation's log)."""
    w = make_window(source=MicSource(SR, device="no-such-device-xyz-123"), kiosk=True)
    now = [0.0]
    w._outage.clock = lambda: now[0]
    caplog.set_level(logging.INFO, logger=window_mod.log.name)
    for _ in range(300):  # ten minutes of retries, one every 2 s
        w._retry_start()
        now[0] += 2.0
    assert w.state == "no-device" and w._retry.isActive()
    recs = [r for r in caplog.records if r.name == window_mod.log.name and "no-such-device-xyz-123" in r.getMessage()]
    assert [r.levelno for r in recs[:1]] == [logging.WARNING]
    assert all(r.levelno == logging.INFO for r in recs[1:]) and 9 <= len(recs) - 1 <= 10


def test_kiosk_starts_over_when_the_piece_ends(make_window, qtbot, performer):
    short = music_signal(0.6, seed=4)
    w = make_window(source=ArraySource(short, SR, realtime=True, block=735), kiosk=True,
                    source_factory=lambda: ArraySource(short, SR, realtime=True, block=735))
    assert w.start()
    first = w.engine
    qtbot.waitUntil(lambda: w.engine is not first and w.engine.running, timeout=WAIT_MS)


# --------------------------------------------------------------------------- keys


def test_keyboard_shortcuts(make_window, qtbot, tmp_path):
    w = make_window()
    w._record_path = tmp_path / "keys.mp4"
    activate(w)

    def key(k):
        qtbot.keyClick(w, k)

    key(Qt.Key.Key_Space)
    assert w.state == "running"
    key(Qt.Key.Key_D)
    assert w.debug_panel.isVisible() and w.engine.config.views
    qtbot.waitUntil(lambda: w.heatmap_view.image is not None and w.coarse_view.image is not None,
                    timeout=WAIT_MS)
    assert w.skeleton_view.image is not None
    key(Qt.Key.Key_R)
    assert "recording" in w.windowTitle() and w.path_label.toolTip() == str(tmp_path / "keys.mp4")
    n = w.engine.stats.frames
    qtbot.waitUntil(lambda: w.engine.stats.frames >= n + 3, timeout=WAIT_MS)
    key(Qt.Key.Key_R)
    assert "recording" not in w.windowTitle()
    key(Qt.Key.Key_D)
    assert not w.debug_panel.isVisible() and not w.engine.config.views
    key(Qt.Key.Key_F11)
    assert w.isFullScreen()
    key(Qt.Key.Key_Escape)
    assert not w.isFullScreen()
    key(Qt.Key.Key_Space)
    assert w.state == "stopped" and not w.engine.running
    key(Qt.Key.Key_Space)
    assert w.state == "running"
    key(Qt.Key.Key_Q)
    assert not w.isVisible() and not w.engine.running
    assert len(read_mp4_frames(tmp_path / "keys.mp4")) >= 1


# --------------------------------------------------------------------------- never blocked


def test_slow_model_does_not_slow_the_window(make_window, qtbot, performer):
    """While the model is stuck inside a step the window keeps ticking and painting; the
    frame that finally comes is shown."""
    b = GatedBackend(performer)
    w = make_window(backend=b)
    assert w.start()
    qtbot.waitUntil(lambda: w.shown is not None, timeout=WAIT_MS)
    b.gate.clear()
    try:
        qtbot.waitUntil(b.waiting.is_set, timeout=WAIT_MS)  # the engine thread is inside a step
        frames0, ticks0, meter0 = w.engine.stats.frames, w.ticks, w.level_meter.paints
        qtbot.waitUntil(lambda: w.ticks >= ticks0 + 10 and w.level_meter.paints >= meter0 + 10, timeout=WAIT_MS)
        assert w.engine.stats.frames == frames0 and b.waiting.is_set()  # all that without a new frame
    finally:
        b.gate.set()
    view0 = w.view.paints
    qtbot.waitUntil(lambda: w.engine.stats.frames > frames0 and w.view.paints > view0, timeout=WAIT_MS)
