"""The Qt window: the engine's frames as they come, with statistics and controls.

A thin client of :mod:`letsplay.realtime`: it builds and starts engines, shows what they
render and forwards the user's choices; no model code runs here.

**Threads and the frame handoff.** The engine renders on its own thread and hands each
frame to :class:`LatestFrame`, a sink that keeps only the newest frame (a lock held for
one pointer swap): the engine never waits for the window. A display timer on the UI
thread (60 Hz) takes the newest frame, wraps its RGB array in a ``QImage`` (no copy:
the engine never touches a frame after handing it out) and repaints, scaled with the
aspect kept. Qt paints every widget into a back buffer and shows it whole, so a frame
is never seen half-drawn. A frame overtaken by a newer one before the next tick is
never shown (``LatestFrame.replaced``). The UI thread never calls the backend, so a slow
model lowers the frame rate, not the window's: it still repaints (level meter,
statistics) at the timer's rate.

**Runs and the session.** An :class:`~letsplay.realtime.engine.Engine` runs once. Stop
then Start, another input device, another lookahead, or a performer with other specs
each end the current run and start a new ``Engine`` (same backend, config and sinks;
a new source). :class:`SessionSinks` holds what outlives a run -- the recording and the
sinks the command line gave (keypoints, OSC) -- and puts every run on one timeline:
a run's frame indices and audio sample positions are shifted to follow the previous
run's end, so a recording goes on seamlessly across device switches and pauses. It is
finalised when recording stops (R) or the window closes. A performer with the same
specs is switched inside the running engine (``Engine.set_backend``), without a gap.

**Kiosk mode** (``letsplay live --kiosk``): frameless full screen, no controls, no
cursor, starts by itself; when there is no input device it retries every 2 s, when the
device goes away the engine keeps running while the source reopens it (the window says
so), and a finished demo or a failed run starts again. Esc leaves kiosk mode.

Keys: Space start/stop, R record, F11 full screen, Esc leave full screen/kiosk,
D debug views (skeleton, heatmap, coarse frame), Q quit.

The drawn widgets (video view, level meter) and the dark theme are in
:mod:`letsplay.ui.widgets`; the Qt-free session sink and timeline in
:mod:`letsplay.realtime.session`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QEvent, QObject, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QGuiApplication, QKeySequence
from PyQt6.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QSizePolicy,
    QSlider,
    QStatusBar,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from letsplay.models.spec import AudioSpec, VideoSpec
from letsplay.realtime.backends import Backend
from letsplay.realtime.engine import Engine
from letsplay.realtime.session import LatestFrame, SessionSinks
from letsplay.realtime.sinks import FrameOut, Mp4Recorder, Sink, SinkError
from letsplay.realtime.sources import (
    ArraySource,
    AudioSource,
    FileSource,
    MicSource,
    OutageLog,
    SourceError,
    list_devices,
)
from letsplay.ui.widgets import STYLE, LevelMeter, VideoView, apply_dark_theme, dark_palette

log = logging.getLogger(__name__)

DISPLAY_HZ = 60  # display timer rate: picks up the newest frame, animates the meter
STATS_INTERVAL_S = 0.25  # statistics labels refresh
RETRY_MS = 2000  # kiosk: try again this long after a failure
LOOKAHEAD_MAX_MS = 500
LATENCY_RECENT = 300  # the p95 shown is over the latest frames, not the whole run

# --------------------------------------------------------------------------- helpers


def backend_specs(backend: Backend) -> tuple[AudioSpec, VideoSpec] | None:
    """The specs a backend was built for (a torch Performer's config or an export's manifest)."""
    return backend.audio, backend.video


def performer_label(backend: Backend) -> str:
    """A short name for what a backend plays: its instrument when known."""
    cfg = backend.cfg
    if cfg is not None and getattr(cfg, "instrument", None):
        return str(cfg.instrument)
    data = backend.manifest.data if backend.manifest is not None else {}
    conf = data.get("config") or data.get("performer_config") or {}
    if isinstance(conf, dict) and conf.get("instrument"):
        return str(conf["instrument"])
    return "performer"


def default_record_path() -> Path:
    folder = Path.home() / "Videos"
    if not folder.is_dir():
        folder = Path.cwd()
    return folder / f"letsplay-{datetime.now():%Y%m%d-%H%M%S}.mp4"


def _next_free(path: Path) -> Path:
    """``path`` if nothing is there, else ``name-2.mp4``, ``name-3.mp4``, ..."""
    if not path.exists():
        return path
    k = 2
    while (p := path.with_name(f"{path.stem}-{k}{path.suffix}")).exists():
        k += 1
    return p


class _NotRestartable(RuntimeError):
    """The window's own source was given as an object that plays once, without a factory."""


class _Signals(QObject):
    backend_ready = pyqtSignal(object, str)  # (backend, performer name), from a loader thread
    backend_failed = pyqtSignal(str)


# --------------------------------------------------------------------------- window

class LetsplayWindow(QMainWindow):
    """The letsplay window over an :class:`Engine` (see the module docstring).

    ``engine`` is not started here: call :meth:`start` (``run_window`` does). Its sinks are
    taken over: an :class:`Mp4Recorder` among them becomes the window's recording (R stops
    it, the path is shown), the others go on across runs. ``source_factory`` builds a fresh
    source for a new run when the engine's source is not a microphone (e.g. the demo
    music, to play it again); a microphone is reopened by the window itself.
    """

    def __init__(self, engine: Engine, kiosk: bool = False, record_path: str | Path | None = None, *,
                 performer: str | None = None, source_factory: Callable[[], AudioSource] | None = None,
                 display_hz: int = DISPLAY_HZ) -> None:
        super().__init__()
        self.engine = engine
        self.kiosk = False
        self.exit_code = 0
        self.ticks = 0  # display timer ticks (tests, diagnostics)
        self.state = "stopped"  # stopped | running | finished | no-device | error
        self.shown: FrameOut | None = None  # the frame on screen now
        self._backend = engine.backend
        self._audio, self._video = engine.audio, engine.video
        self._config = engine.config
        self._performer = performer or performer_label(engine.backend)
        self._started: Engine | None = None  # the engine that has run (an Engine runs once)
        self._source_factory = source_factory
        self._signals = _Signals()
        self._signals.backend_ready.connect(self._on_backend_ready)
        self._signals.backend_failed.connect(self._on_backend_failed)
        self._closing = False

        # the input: a microphone (device spec) or the engine's own kind of source
        src = engine.sources[0]
        if isinstance(src, MicSource):
            self._input: tuple[str, object] = ("mic", src.device_spec)
            self._source_mode = "demo"
        else:
            self._input = ("source", None)
            self._source_mode = "demo" if src.name == "array" else Path(getattr(src, "path", src.name)).name
            if self._source_factory is None and isinstance(src, FileSource):
                f = src
                self._source_factory = lambda: FileSource(f.path, f.sample_rate, f.realtime, f.play,
                                                          f.output_device, f.block)
            if self._source_factory is None and getattr(src, "samples", None) is not None:
                a = src
                self._source_factory = lambda: ArraySource(a.samples, a.sample_rate, a.realtime, a.play,
                                                           a.output_device, a.block)
        self._engine_input = self._input  # what the current engine's source is
        self._lost_shown = False
        self._outage = OutageLog(log)  # failed starts / runs: logged once, then at most once a minute
        self._normal_geometry = None  # the window's geometry before it covered the screen

        # sinks: the newest frame for the screen; the rest go on across runs
        recorder = None
        rest: list[Sink] = []
        for s in engine.sinks:
            if isinstance(s, Mp4Recorder) and recorder is None:
                recorder = s
            else:
                rest.append(s)
        if recorder is None and record_path is not None:
            recorder = Mp4Recorder(record_path)
        self._record_path = Path(recorder.path) if recorder is not None else None
        self._slot = LatestFrame()
        self._session = SessionSinks(rest, recorder)
        engine.sinks = [self._slot, self._session]

        self._build_ui()
        self._build_actions()
        self._refresh_devices()
        self._refresh_performers()
        self.resize(1180, 760)

        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(max(1, round(1000 / display_hz)))
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._last_stats = 0.0
        self._retry = QTimer(self)
        self._retry.setSingleShot(True)
        self._retry.timeout.connect(self._retry_start)
        self._lookahead_apply = QTimer(self)
        self._lookahead_apply.setSingleShot(True)
        self._lookahead_apply.setInterval(400)
        self._lookahead_apply.timeout.connect(lambda: self.set_lookahead(self.lookahead.value()))
        if kiosk:
            self.set_kiosk(True)
        self._update_title()
        self._update_controls()

    # ------------------------------------------------------------------ building
    def _build_ui(self) -> None:
        self.setStyleSheet(STYLE)
        self.setPalette(dark_palette(self.palette()))

        tb = QToolBar("controls", self)
        tb.setMovable(False)
        tb.setFloatable(False)
        tb.setContextMenuPolicy(Qt.ContextMenuPolicy.PreventContextMenu)
        self.addToolBar(tb)
        self.toolbar = tb

        def button(text: str, tip: str, checkable: bool = False, name: str = "") -> QPushButton:
            b = QPushButton(text)
            b.setToolTip(tip)
            b.setCheckable(checkable)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys stay with the window's shortcuts
            if name:
                b.setObjectName(name)
            return b

        def label(text: str, name: str = "muted") -> QLabel:
            lab = QLabel(text)
            lab.setObjectName(name)
            return lab

        self.start_btn = button("Start", "start / stop (Space)", checkable=True)
        self.start_btn.setMinimumWidth(78)
        self.start_btn.clicked.connect(self.toggle_running)
        tb.addWidget(self.start_btn)
        tb.addSeparator()

        tb.addWidget(label("Input"))
        self.input_combo = QComboBox()
        self.input_combo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.input_combo.setMinimumContentsLength(16)
        self.input_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.input_combo.activated.connect(self._on_input_picked)
        tb.addWidget(self.input_combo)
        refresh = button("↻", "look for input devices again")
        refresh.clicked.connect(self._refresh_devices)
        tb.addWidget(refresh)

        tb.addWidget(label("  Performer"))
        self.performer_combo = QComboBox()
        self.performer_combo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.performer_combo.activated.connect(self._on_performer_picked)
        tb.addWidget(self.performer_combo)
        tb.addSeparator()

        self.record_btn = button("● Rec", "record to an mp4 (R)", checkable=True, name="record")
        self.record_btn.clicked.connect(self.toggle_recording)
        tb.addWidget(self.record_btn)
        choose = button("…", "choose where to record")
        choose.clicked.connect(self._choose_record_path)
        tb.addWidget(choose)
        self.path_label = label("", "path")
        self.path_label.setMinimumWidth(40)
        self.path_label.setMaximumWidth(260)
        tb.addWidget(self.path_label)

        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        tb.addWidget(spacer)
        tb.addWidget(label("Lookahead"))
        self.lookahead = QSlider(Qt.Orientation.Horizontal)
        self.lookahead.setRange(0, LOOKAHEAD_MAX_MS)
        self.lookahead.setSingleStep(10)
        self.lookahead.setPageStep(50)
        self.lookahead.setFixedWidth(120)
        self.lookahead.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.lookahead.setToolTip("future audio the model sees; the picture is delayed as much "
                                  "(applies by restarting the stream)")
        self.lookahead.setValue(int(round(self._video.lookahead_ms)))
        self.lookahead.valueChanged.connect(self._on_lookahead_moved)
        tb.addWidget(self.lookahead)
        self.lookahead_label = label(f"{self._video.lookahead_ms:.0f} ms")
        self.lookahead_label.setMinimumWidth(48)
        tb.addWidget(self.lookahead_label)
        tb.addSeparator()
        self.views_btn = button("Debug views", "skeleton, heatmap and coarse frame beside the output (D)",
                                checkable=True)
        self.views_btn.clicked.connect(lambda on: self.set_debug_views(on))
        tb.addWidget(self.views_btn)
        self.fullscreen_btn = button("Full screen", "full screen (F11); Esc leaves it", checkable=True)
        self.fullscreen_btn.clicked.connect(lambda on: self.set_fullscreen(on))
        tb.addWidget(self.fullscreen_btn)

        central = QWidget()
        central.setObjectName("central")
        row = QHBoxLayout(central)
        row.setContentsMargins(10, 10, 10, 10)
        row.setSpacing(10)
        self.view = VideoView(placeholder="waiting for frames…")
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        row.addWidget(self.view, 3)
        self.debug_panel = QWidget()
        col = QVBoxLayout(self.debug_panel)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(10)
        self.skeleton_view = VideoView("keypoints", "no keypoints (this model has no KHP)", skeleton=True)
        self.heatmap_view = VideoView("heatmap", "no heatmap yet")
        self.coarse_view = VideoView("coarse frame", "no coarse frame yet")
        for v in (self.skeleton_view, self.heatmap_view, self.coarse_view):
            col.addWidget(v, 1)
        row.addWidget(self.debug_panel, 1)
        self.debug_panel.hide()
        self.setCentralWidget(central)

        self.message = QLabel(self.view)
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        self.view.installEventFilter(self)

        sb = QStatusBar(self)
        sb.setSizeGripEnabled(False)
        self.setStatusBar(sb)
        self.state_label = label("stopped", "state")
        self.fps_label = label("— fps")
        self.latency_label = label("latency p95 —")
        self.dropped_label = label("dropped 0")
        self.frames_label = label("0 frames")
        self.level_meter = LevelMeter()
        self.level_label = label("— dBFS")
        self.level_label.setMinimumWidth(70)
        for w in (self.state_label, self.fps_label, self.latency_label, self.dropped_label, self.frames_label):
            sb.addWidget(w)
        self.backend_label = label(f"{self._backend.name} on {self._backend.device}")
        sb.addPermanentWidget(self.backend_label)
        sb.addPermanentWidget(label("input"))
        sb.addPermanentWidget(self.level_meter)
        sb.addPermanentWidget(self.level_label)

    def _build_actions(self) -> None:
        def act(text: str, key, fn) -> QAction:
            a = QAction(text, self)
            a.setShortcut(QKeySequence(key))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.triggered.connect(fn)
            self.addAction(a)  # works with the toolbar hidden (kiosk) too
            return a

        self.actions_by_key = {
            "space": act("Start/stop", Qt.Key.Key_Space, self.toggle_running),
            "r": act("Record", Qt.Key.Key_R, self.toggle_recording),
            "f11": act("Full screen", Qt.Key.Key_F11, lambda: self.set_fullscreen(not self.isFullScreen())),
            "esc": act("Leave full screen", Qt.Key.Key_Escape, self.leave_fullscreen),
            "d": act("Debug views", Qt.Key.Key_D, lambda: self.set_debug_views(not self.debug_panel.isVisible())),
            "q": act("Quit", Qt.Key.Key_Q, self.close),
        }

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - keeps the message centred in the view
        if obj is self.view and event.type() == QEvent.Type.Resize:
            self._place_message()
        return False

    def _place_message(self) -> None:
        r = self.view.rect()
        w = min(560, max(200, r.width() - 40))
        self.message.setFixedWidth(w)
        self.message.adjustSize()
        self.message.move((r.width() - w) // 2, (r.height() - self.message.height()) // 2)

    # ------------------------------------------------------------------ pickers
    def _refresh_devices(self) -> None:
        c = self.input_combo
        c.clear()
        if self._input[0] == "source" or self._source_factory is not None:
            c.addItem(f"{self._mode} (built in)" if self._mode == "demo" else self._mode, ("source", None))
        try:
            devs = [d for d in list_devices() if d["inputs"] > 0]
        except SourceError as e:
            log.warning("cannot list audio devices: %s", e)
            devs = []
        self.devices = devs
        if devs:
            c.addItem("default input", ("mic", None))
            for d in devs:
                c.addItem(f"{d['name']}", ("mic", d["index"]))
        else:
            c.addItem("no input devices found", ("none", None))
            c.model().item(c.count() - 1).setEnabled(False)
        kind, cur = self._input
        for i in range(c.count()):
            if c.itemData(i) == (kind, cur):
                c.setCurrentIndex(i)
                return
        if kind == "mic" and isinstance(cur, str):  # a name or a part of one, as given on the command line
            for i in range(c.count()):
                if c.itemData(i)[0] == "mic" and cur.lower() in c.itemText(i).lower():
                    c.setCurrentIndex(i)
                    return
        if kind == "mic" and cur is not None:  # a device PortAudio does not list (any more)
            c.insertItem(0, str(cur), (kind, cur))
            c.setCurrentIndex(0)

    def _refresh_performers(self) -> None:
        from letsplay.realtime.performers import shipped_performers

        c = self.performer_combo
        c.clear()
        c.addItem(self._performer, ("current", None))
        try:
            shipped = shipped_performers()
        except Exception as e:  # noqa: BLE001 - a broken install must not stop the window
            log.warning("cannot list the shipped performers: %s", e)
            shipped = {}
        for name in shipped:
            if name != self._performer:
                c.addItem(name, ("spec", name))
        c.addItem("Open checkpoint or export…", ("open", None))
        c.setCurrentIndex(0)

    def _on_input_picked(self, i: int) -> None:
        kind, dev = self.input_combo.itemData(i)
        if kind == "none":
            return
        self.set_input(dev if kind == "mic" else None, source=kind == "source")

    def _on_performer_picked(self, i: int) -> None:
        kind, spec = self.performer_combo.itemData(i)
        if kind == "open":
            path, _ = QFileDialog.getOpenFileName(self, "Open a performer", str(Path.cwd()),
                                                  "Performers (*.safetensors manifest.json);;All files (*)")
            self.performer_combo.setCurrentIndex(0)
            if not path:
                return
            spec = str(Path(path).parent) if Path(path).name == "manifest.json" else path
        elif kind == "current":
            return
        self.set_performer(spec)

    # ------------------------------------------------------------------ runs
    def _make_source(self) -> AudioSource:
        kind, dev = self._input
        if kind == "mic":
            old = self.engine.sources[0]
            opts = {}
            if isinstance(old, MicSource):
                opts = {"channels": old.channels, "blocksize": old.blocksize, "reopen_s": old.reopen_s}
            return MicSource(self._audio.sample_rate, device=dev, **opts)
        if self._source_factory is None:
            raise _NotRestartable(f"The {self._source_mode} input cannot be played again from here "
                                  f"(it was given without a way to rebuild it). Pick an input device under Input.")
        return self._source_factory()

    @property
    def _mode(self) -> str:
        return "live" if self._input[0] == "mic" else self._source_mode

    def _new_engine(self) -> Engine:
        """An engine for the next run; it keeps the current engine's source when that one
        has not run yet and is still the chosen input."""
        if self._started is not self.engine and self._engine_input == self._input:
            src = self.engine.sources[0]
        else:
            src = self._make_source()
        eng = Engine(self._backend, self._audio, self._video, src, [self._slot, self._session], self._config)
        self._engine_input = self._input
        return eng

    def _replace_engine(self) -> bool:
        """A new (not started) engine for the next run; False, with a message, when its
        source cannot be made."""
        try:
            self.engine = self._new_engine()
        except (_NotRestartable, SourceError) as e:
            return self._cannot_open(e)
        return True

    def _cannot_open(self, e: Exception) -> bool:
        """Show why the input cannot be opened (a finished piece, no device); False."""
        if isinstance(e, _NotRestartable):
            self._fail_start("finished", str(e))
        else:
            self._fail_start("no-device", self._no_device_text(e))
        return False

    def _fresh(self) -> Engine:
        """The engine for the next run: the current one if it has not run yet."""
        if self._started is not self.engine:
            return self.engine
        self.engine = self._new_engine()
        return self.engine

    def start(self) -> bool:
        """Start a run (no-op when running). False, with a message shown, when it cannot."""
        self._retry.stop()
        if self.engine.running:
            return True
        try:
            eng = self._fresh()
            eng.start()
        except (_NotRestartable, SourceError) as e:
            return self._cannot_open(e)
        except SinkError as e:
            self._session.stop_recording()
            self._fail_start("error", f"Cannot record: {e}")
            return False
        except Exception as e:  # noqa: BLE001 - shown in the window, not a crash
            log.exception("starting the engine failed")
            self._fail_start("error", f"Cannot start: {type(e).__name__}: {e}")
            return False
        self._started = eng
        self._set_state("running")
        self._show_message(None)
        log.info("run started (%s, %s)", self._mode, self._performer)
        return True

    def _no_device_text(self, e: Exception) -> str:
        if self._input[0] == "mic" and not self.devices:
            head = "No audio input device found."
        else:
            head = "The audio input cannot be opened."
        tail = ("Retrying every 2 s…" if self.kiosk else
                "Connect a microphone (or start PulseAudio / PipeWire), pick it under Input, "
                "then press Space.")
        return f"{head}\n{e}\n\n{tail}"

    def _fail_start(self, state: str, text: str) -> None:
        self._outage.failed(text.replace("\n", " "))
        self._set_state(state)
        self._show_message(text)
        if self.kiosk:
            self._retry.start(RETRY_MS)

    def _retry_start(self) -> None:
        if self._closing or self.engine.running:
            return
        if self.state in ("error", "finished"):
            self._started = self.engine  # the failed/finished one: build a new run
        self.start()

    def stop(self) -> None:
        """Stop the run (the recording stays armed and goes on at the next run)."""
        self._retry.stop()
        self.engine.stop()
        self._set_state("stopped")
        if not self.kiosk:
            self._show_message("Stopped. Press Space to start.")

    def toggle_running(self) -> None:
        if self.engine.running:
            self.stop()
        else:
            self.start()

    def restart(self) -> None:
        """End this run and start a new one (new source, current backend and specs)."""
        was = self.engine.running or self.state in ("running", "no-device")
        self.engine.stop()
        if not self._replace_engine():
            return
        if was:
            self.start()
        else:
            self._update_controls()

    def set_input(self, device: str | int | None, source: bool = False) -> None:
        """Switch to a microphone ``device`` (None: the default input), or back to the
        window's own source (``source=True``, e.g. the demo music)."""
        new = ("source", None) if source else ("mic", device)
        if new == self._input and self.state == "running":
            return
        self._input = new
        log.info("input: %s", "built-in source" if source else (device if device is not None else "default"))
        was_running = self.engine.running
        self.engine.stop()
        if not self._replace_engine():
            return
        if was_running or self.state in ("no-device", "running") or self.kiosk:
            self.start()
        self._update_title()

    def set_lookahead(self, ms: float) -> None:
        """Give the model ``ms`` of future audio (the picture is delayed as much); a new run."""
        ms = float(max(0, min(LOOKAHEAD_MAX_MS, ms)))
        self.lookahead_label.setText(f"{ms:.0f} ms")
        if self.lookahead.value() != round(ms):
            self.lookahead.blockSignals(True)
            self.lookahead.setValue(round(ms))
            self.lookahead.blockSignals(False)
        if ms == self._video.lookahead_ms:
            return
        self._video = dataclasses.replace(self._video, lookahead_ms=ms)
        log.info("lookahead %.0f ms", ms)
        self.restart()

    def _on_lookahead_moved(self, v: int) -> None:
        self.lookahead_label.setText(f"{v} ms")
        self._lookahead_apply.start()  # applied once the slider rests

    def set_performer(self, spec: str, backend_kind: str | None = None) -> None:
        """Load a performer (shipped name, checkpoint or exported folder) on a thread and
        switch to it when ready; the window goes on meanwhile."""
        from letsplay.realtime.backends import BackendOptions, open_backend
        from letsplay.realtime.performers import resolve_performer

        kind = backend_kind or self._backend.name
        dev = None
        if kind in ("torch", "onnxruntime"):
            dev = "cuda" if "cuda" in str(self._backend.device).lower() else "cpu"
        self._show_message(f"Loading performer {spec}…")

        def load() -> None:
            try:
                ref = resolve_performer(spec)
                b = open_backend(ref, BackendOptions(
                    backend=kind if kind in ("torch", "onnxruntime", "tensorrt") else "auto", compute=dev,
                    pipeline=self._backend.pipeline))  # as running
                self._signals.backend_ready.emit(b, ref.name)
            except Exception as e:  # noqa: BLE001 - reported in the window
                log.exception("loading performer %s failed", spec)
                self._signals.backend_failed.emit(f"Cannot load performer {spec}: {e}")

        threading.Thread(target=load, name="letsplay-load-performer", daemon=True).start()

    def _on_backend_ready(self, backend, name: str) -> None:
        if self._closing:
            return
        self.apply_backend(backend, name)

    def _on_backend_failed(self, text: str) -> None:
        if not self._closing:
            self._show_message(text)

    def apply_backend(self, backend, name: str) -> None:
        """Play with ``backend`` from now on: inside the running engine when the specs
        match (no gap), else in a new run with the new specs."""
        specs = backend_specs(backend)
        self._backend = backend
        self._performer = name
        self._refresh_performers()
        self.backend_label.setText(f"{backend.name} on {backend.device}")
        self._show_message(None)
        same = specs is None or (specs[0] == self._audio and
                                 dataclasses.replace(specs[1], lookahead_ms=self._video.lookahead_ms) == self._video)
        if same and self.engine.running:
            self.engine.set_backend(backend)
        else:
            if specs is not None:
                self._audio = specs[0]
                self._video = dataclasses.replace(specs[1], lookahead_ms=self._video.lookahead_ms)
            self.restart()
        log.info("performer: %s (%s on %s)", name, backend.name, backend.device)
        self._update_title()

    # ------------------------------------------------------------------ recording
    def toggle_recording(self) -> None:
        if self._session.failure and self.message_text() == self._session.failure:
            self._show_message(None)
        if self._session.recorder is not None or self._session.recording_path is not None:
            self.stop_recording()
        else:
            self.start_recording()

    def start_recording(self, path: str | Path | None = None) -> Path | None:
        """Record (from now on) to ``path``; default: the path given at start, else a new
        file in ~/Videos (or the working folder). Never overwrites an earlier take."""
        p = Path(path) if path is not None else (self._record_path or default_record_path())
        p = _next_free(p.expanduser())
        try:
            out = self._session.start_recording(p)
        except (SinkError, OSError) as e:
            self._show_message(f"Cannot record: {e}")
            self._update_controls()
            return None
        self._record_path = out
        self._update_controls()
        self._update_title()
        return out

    def stop_recording(self) -> Path | None:
        rec = self._session.stop_recording()
        self._update_controls()
        self._update_title()
        if rec is None:
            return None
        self.statusBar().showMessage(f"recorded {rec.frames_written} frames to {rec.path}", 8000)
        return rec.path

    def _choose_record_path(self) -> None:
        start = str(self._record_path or default_record_path())
        path, _ = QFileDialog.getSaveFileName(self, "Record to", start, "MP4 video (*.mp4)")
        if path:
            self._record_path = Path(path if path.endswith(".mp4") else path + ".mp4")
            if self._session.recorder is not None:  # switch files now
                self.start_recording(self._record_path)
            self._update_controls()

    # ------------------------------------------------------------------ views
    def set_debug_views(self, on: bool) -> None:
        """Show the skeleton / heatmap / coarse views beside the frame; asks the engine
        for the views (``EngineConfig.views``) only while they are shown."""
        self.debug_panel.setVisible(on)
        self.views_btn.setChecked(on)
        self._config = dataclasses.replace(self._config, views=on)
        # the engine reads its config at every frame: the views start or stop at the next one
        self.engine.config = self._config

    def set_fullscreen(self, on: bool) -> None:
        if on:
            self._cover_screen()
        else:
            self._uncover_screen()
        self.fullscreen_btn.setChecked(on)

    def _cover_screen(self) -> None:
        """Full screen, and the screen's geometry set explicitly: ``showFullScreen`` is a
        request to the window manager, and an installation's bare X server has none."""
        if self._normal_geometry is None and not self.isFullScreen():
            self._normal_geometry = self.geometry()
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is not None:  # first: a geometry set after showFullScreen would end the full-screen state
            self.setGeometry(screen.geometry())
        self.showFullScreen()

    def _uncover_screen(self) -> None:
        self.showNormal()
        if self._normal_geometry is not None:
            self.setGeometry(self._normal_geometry)
            self._normal_geometry = None

    def leave_fullscreen(self) -> None:
        if self.kiosk:
            self.set_kiosk(False)
        elif self.isFullScreen():
            self.set_fullscreen(False)

    def set_kiosk(self, on: bool) -> None:
        """Kiosk: frameless full screen, no controls, no cursor; failures retry by themselves."""
        self.kiosk = on
        self.toolbar.setVisible(not on)
        self.statusBar().setVisible(not on)
        if on and self._normal_geometry is None and not self.isFullScreen():
            self._normal_geometry = self.geometry()
        self.setWindowFlag(Qt.WindowType.FramelessWindowHint, on)
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, on)
        if on:
            self.view.setCursor(Qt.CursorShape.BlankCursor)
            self._cover_screen()
        else:
            self.view.unsetCursor()
            self._retry.stop()
            self._uncover_screen()
        self.fullscreen_btn.setChecked(on)

    # ------------------------------------------------------------------ the display tick
    def _tick(self) -> None:
        """60 Hz on the UI thread: newest frame, meter, statistics, run state. Never waits."""
        self.ticks += 1
        f = self._slot.take()
        if f is not None:
            self._show_frame(f)
        stats = self.engine.stats
        self.level_meter.set_level(stats.input_rms if self.engine.running else 0.0)
        now = time.monotonic()
        if now - self._last_stats >= STATS_INTERVAL_S:
            self._last_stats = now
            self._update_stats()
        self._check_run()

    def _show_frame(self, f: FrameOut) -> None:
        self.shown = f
        self.view.set_frame(f.frame)
        if self.debug_panel.isVisible():
            self.skeleton_view.set_frame(f.frame, f.keypoints if np.isfinite(f.keypoints).any() else None)
            self.heatmap_view.set_frame(f.views.get("heatmap"))
            self.coarse_view.set_frame(f.views.get("coarse"))

    def _update_stats(self) -> None:
        st = self.engine.stats
        running = self.engine.running
        self.fps_label.setText(f"{st.fps():.1f} fps" if running else "— fps")
        lat = list(st.latency_ms)[-LATENCY_RECENT:]
        self.latency_label.setText(f"latency p95 {np.percentile(lat, 95):.0f} ms" if lat else "latency p95 —")
        self.dropped_label.setText(f"dropped {st.dropped}")
        self.frames_label.setText(f"{st.frames} frames")
        db = 20 * math.log10(max(st.input_rms, 1e-9)) if running else -math.inf
        self.level_label.setText(f"{db:.0f} dBFS" if db > -120 else "— dBFS")
        if self._session.failure and self._session.recorder is None and self.record_btn.isChecked():
            self._show_message(self._session.failure)
            self._update_controls()
            self._update_title()
        if running and self.state == "running" and st.frames > 0 and self._outage.active:
            self._outage.recovered("running again")
        if running and self.state == "running":
            lost = st.device_lost
            if lost != self._lost_shown:
                self._lost_shown = lost
                self._show_message("Input device lost — reconnecting…" if lost else None)
                self._update_title()
                self._update_controls()

    def _check_run(self) -> None:
        """A run that ended by itself: the piece is over, or the engine failed."""
        if self.state != "running" or self.engine.running or self._started is not self.engine:
            return
        eng = self.engine
        eng.stop()  # close the source and this run's sinks
        if eng.error is not None:
            self._outage.failed(f"the engine stopped: {type(eng.error).__name__}: {eng.error}")
            self._set_state("error")
            self._show_message(f"The engine stopped: {type(eng.error).__name__}: {eng.error}")
            if self.kiosk:
                self._retry.start(RETRY_MS)
        else:
            self._set_state("finished")
            if self.kiosk:
                self._retry.start(300)  # an installation plays the piece again
            else:
                self._show_message("The piece is over. Press Space to play it again.")

    # ------------------------------------------------------------------ state & text
    def _show_message(self, text: str | None) -> None:
        """A message over the picture (None hides it)."""
        if not text:
            self.message.hide()
            return
        self.message.setText(text)
        self._place_message()
        self.message.show()
        self.message.raise_()

    def message_text(self) -> str | None:
        return self.message.text() if self.message.isVisible() else None

    def _set_state(self, state: str) -> None:
        self.state = state
        self._update_title()
        self._update_controls()

    def state_text(self) -> str:
        if self.state == "running":
            return "input lost" if self.engine.stats.device_lost else self._mode
        return {"no-device": "no input device"}.get(self.state, self.state)

    def _update_title(self) -> None:
        parts = ["letsplay", self._mode, self._performer]
        if self.state != "running":
            parts.append({"no-device": "no input device"}.get(self.state, self.state))
        elif self.engine.stats.device_lost:
            parts.append("input lost")
        if self._session.recorder is not None or self._session.recording_path is not None:
            parts.append("recording")
        self.setWindowTitle(" — ".join(parts))

    def _update_controls(self) -> None:
        running = self.state == "running"
        self.start_btn.setChecked(running)
        self.start_btn.setText("Stop" if running else "Start")
        recording = self._session.recording_path is not None
        self.record_btn.setChecked(recording)
        self.record_btn.setText("● Recording" if recording else "● Rec")
        path = self._session.recording_path or self._record_path
        if path is not None:
            self.path_label.setText(self.path_label.fontMetrics().elidedText(
                str(path), Qt.TextElideMode.ElideMiddle, 250))
            self.path_label.setToolTip(str(path))
        else:
            self.path_label.setText("")
        text = self.state_text().upper() if self.state == "running" else self.state_text()
        colours = {"running": "#1f7a46", "no-device": "#8a2d2d", "error": "#8a2d2d", "finished": "#2a2e3b"}
        bg = colours.get(self.state, "#2a2e3b")
        if running and self.engine.stats.device_lost:
            bg = "#8a6a1d"
        if recording:
            text += "  ● REC"
        self.state_label.setText(text)
        self.state_label.setStyleSheet(f"background: {bg};")

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event) -> None:  # noqa: N802
        """Stop the engine, finalise the recording and the other sinks, then close."""
        if not self._closing:
            self._closing = True
            self._timer.stop()
            self._retry.stop()
            eng = self.engine
            eng.stop()
            self._session.finish()
            if eng.error is not None or self.state == "error":
                self.exit_code = 1
            elif self.state == "no-device":
                self.exit_code = 2
            log.info("window closed (%s)", self.state)
        event.accept()


# --------------------------------------------------------------------------- entry point


def run_window(engine: Engine, kiosk: bool = False, record_path: str | Path | None = None, *,
               performer: str | None = None, source_factory: Callable[[], AudioSource] | None = None) -> int:
    """Show the window over ``engine``, start it and run the Qt event loop until the window
    closes; the engine is stopped and the recording finalised on the way out.

    ``record_path``: record from the start (the engine's own :class:`Mp4Recorder` sink,
    if it has one, is used). Returns the exit code: 0, 1 after an engine error, 2 when
    no input device could be opened."""
    app = QApplication.instance()
    own = app is None
    if own:
        app = QApplication([sys.argv[0] if sys.argv else "letsplay"])
        app.setApplicationName("letsplay")
        apply_dark_theme(app)
    win = LetsplayWindow(engine, kiosk=kiosk, record_path=record_path, performer=performer,
                         source_factory=source_factory)
    if not kiosk:
        win.show()
    win.start()
    # Ctrl-C in the terminal (or SIGTERM from kill / systemd) closes the window cleanly, as its
    # close button does; the timer lets Python see the signal.
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, lambda *_: win.close()) for sig in (signal.SIGINT, signal.SIGTERM)}
    wake = QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(200)
    try:
        if win.isVisible():
            app.exec()
    finally:
        wake.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if not win._closing:
            win.close()
    return win.exit_code
