"""The window's look and its two drawn widgets: the dark palette and style sheet, the video
view (a frame scaled with its aspect kept, a caption, an optional skeleton overlay) and the
input level meter."""

from __future__ import annotations

import math
import time

import numpy as np
from PyQt6.QtCore import QPointF, QRect, QRectF, QSize, Qt
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPalette, QPen
from PyQt6.QtWidgets import QApplication, QSizePolicy, QWidget

from letsplay.models.skeleton import EDGES, LEFT_HAND, RIGHT_HAND


def _qimage(rgb: np.ndarray) -> QImage:
    """A QImage over an [H, W, 3] uint8 array (no copy: keep the array alive while it is used)."""
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)


def fit_rect(area: QRect, w: int, h: int) -> QRectF:
    """The largest rectangle of aspect w:h centred in ``area``."""
    if w <= 0 or h <= 0 or area.width() <= 0 or area.height() <= 0:
        return QRectF()
    s = min(area.width() / w, area.height() / h)
    tw, th = w * s, h * s
    return QRectF(area.x() + (area.width() - tw) / 2, area.y() + (area.height() - th) / 2, tw, th)


BG = QColor(12, 13, 17)
PANEL = QColor(20, 22, 29)
TEXT = QColor(230, 232, 239)
MUTED = QColor(138, 144, 162)
ACCENT = QColor(47, 111, 237)
RED = QColor(226, 64, 64)
GREEN = QColor(70, 200, 120)
AMBER = QColor(240, 180, 60)

BODY_PEN = QColor(79, 195, 247)
LEFT_PEN = QColor(255, 183, 77)
RIGHT_PEN = QColor(129, 199, 132)


class VideoView(QWidget):
    """Paints an RGB frame scaled into the widget with its aspect kept; optionally the
    skeleton over it (``skeleton=True``) and a caption. Never blocks: it only paints what
    it was given."""

    def __init__(self, caption: str = "", placeholder: str = "", skeleton: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.caption = caption
        self.placeholder = placeholder
        self.skeleton = skeleton
        self.paints = 0  # paint events so far (tests, diagnostics)
        self._rgb: np.ndarray | None = None
        self._img: QImage | None = None
        self._kp: np.ndarray | None = None
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(120, 90)

    def sizeHint(self) -> QSize:
        return QSize(640, 640)

    @property
    def image(self) -> QImage | None:
        """The image shown now (over the frame's own pixels)."""
        return self._img

    def set_frame(self, rgb: np.ndarray | None, keypoints: np.ndarray | None = None) -> None:
        if rgb is None:
            self._rgb = self._img = None
        else:
            self._rgb = np.ascontiguousarray(rgb)
            self._img = _qimage(self._rgb)
        self._kp = keypoints
        self.update()

    def image_rect(self) -> QRectF:
        """Where the frame is drawn, in widget coordinates."""
        if self._img is None:
            return QRectF()
        return fit_rect(self.rect().adjusted(4, 4, -4, -4), self._img.width(), self._img.height())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.paints += 1
        p = QPainter(self)
        p.fillRect(self.rect(), BG)
        target = self.image_rect()
        if self._img is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            if self.skeleton:
                p.setOpacity(0.35)
            p.drawImage(target, self._img)
            p.setOpacity(1.0)
            if self.skeleton and self._kp is not None:
                self._draw_skeleton(p, target)
        elif self.placeholder:
            p.setPen(MUTED)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
        if self.caption:
            f = QFont(self.font())
            f.setPointSizeF(max(7.0, f.pointSizeF() * 0.85))
            p.setFont(f)
            corner = target.topLeft() if not target.isEmpty() else QPointF(4, 4)
            box = QRectF(corner.x() + 6, corner.y() + 6, p.fontMetrics().horizontalAdvance(self.caption) + 14,
                         p.fontMetrics().height() + 6)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(0, 0, 0, 150))
            p.drawRoundedRect(box, 5, 5)
            p.setPen(TEXT)
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, self.caption)
        p.end()

    def _draw_skeleton(self, p: QPainter, r: QRectF) -> None:
        kp = self._kp
        if kp is None or kp.shape != (67, 2):
            return
        pts = [QPointF(r.x() + x * r.width(), r.y() + y * r.height()) if np.isfinite(x) and np.isfinite(y)
               else None for x, y in kp]
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        width = max(1.5, r.width() / 160)
        for a, b in EDGES:
            if pts[a] is None or pts[b] is None:
                continue
            colour = LEFT_PEN if a in LEFT_HAND else RIGHT_PEN if a in RIGHT_HAND else BODY_PEN
            hand = a in LEFT_HAND or a in RIGHT_HAND
            p.setPen(QPen(colour, width * (0.6 if hand else 1.0), Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
            p.drawLine(pts[a], pts[b])
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(TEXT)
        for i, q in enumerate(pts):
            if q is not None:
                rad = width * (0.55 if i >= LEFT_HAND[0] else 0.9)
                p.drawEllipse(q, rad, rad)


class LevelMeter(QWidget):
    """The input level in dBFS: a bar (-60..0 dB) with peak hold; repaints every tick."""

    FLOOR_DB = -60.0

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.db = self.FLOOR_DB
        self.peak = self.FLOOR_DB
        self._peak_t = 0.0
        self._t = time.monotonic()
        self.paints = 0
        self.setFixedSize(120, 12)
        self.setToolTip("input level (dBFS)")

    def set_level(self, rms: float) -> None:
        now = time.monotonic()
        dt, self._t = now - self._t, now
        db = max(self.FLOOR_DB, 20 * math.log10(max(rms, 1e-9)))
        # ballistics: rises at once, falls 24 dB/s; the peak holds 1.5 s
        self.db = db if db > self.db else max(db, self.db - 24.0 * dt)
        if db >= self.peak or now - self._peak_t > 1.5:
            self.peak, self._peak_t = db, now
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        self.paints += 1
        p = QPainter(self)
        r = self.rect()
        p.fillRect(r, QColor(32, 35, 46))
        frac = (self.db - self.FLOOR_DB) / -self.FLOOR_DB
        colour = GREEN if self.db < -12 else AMBER if self.db < -3 else RED
        p.fillRect(QRectF(0, 0, r.width() * frac, r.height()), colour)
        px = r.width() * (self.peak - self.FLOOR_DB) / -self.FLOOR_DB
        p.fillRect(QRectF(min(px, r.width() - 2), 0, 2, r.height()), TEXT)
        p.end()


STYLE = """
QMainWindow, QWidget#central { background: #0c0d11; }
QToolBar { background: #15171e; border: none; border-bottom: 1px solid #252936; spacing: 6px; padding: 6px 10px; }
QStatusBar { background: #15171e; border-top: 1px solid #252936; color: #aab0c0; }
QStatusBar::item { border: none; }
QLabel { color: #c9cdd8; }
QStatusBar QLabel { padding: 0 6px; }
QLabel#muted { color: #8a90a2; }
QLabel#state { color: #ffffff; background: #2a2e3b; border-radius: 9px; padding: 2px 10px; font-weight: 600; }
QLabel#path { color: #8a90a2; }
QLabel#message { background: rgba(16, 18, 24, 230); border: 1px solid #3a4052; border-radius: 12px;
                 padding: 18px 26px; color: #f1f2f6; font-size: 15px; }
QPushButton { background: #232734; border: 1px solid #313749; border-radius: 6px; padding: 5px 12px;
              color: #e6e8ef; }
QPushButton:hover { background: #2c3142; }
QPushButton:checked { background: #2f6fed; border-color: #2f6fed; }
QPushButton#record:checked { background: #d93a3a; border-color: #d93a3a; }
QPushButton:disabled { color: #5d6272; }
QComboBox { background: #1c1f29; border: 1px solid #313749; border-radius: 6px; padding: 4px 8px;
            color: #e6e8ef; min-width: 110px; }
QComboBox::drop-down { border: none; width: 18px; }
QComboBox QAbstractItemView { background: #1c1f29; color: #e6e8ef; selection-background-color: #2f6fed; }
QSlider::groove:horizontal { height: 4px; background: #313749; border-radius: 2px; }
QSlider::sub-page:horizontal { background: #2f6fed; border-radius: 2px; }
QSlider::handle:horizontal { width: 14px; margin: -6px 0; border-radius: 7px; background: #e6e8ef; }
"""


def apply_dark_theme(app: QApplication) -> None:
    """Fusion with a dark palette (the window's own style sheet does the rest)."""
    app.setStyle("Fusion")
    app.setPalette(dark_palette(QPalette()))


def dark_palette(pal: QPalette) -> QPalette:
    """``pal`` with the dark colours set on every role the window uses."""
    for role, colour in ((QPalette.ColorRole.Window, BG), (QPalette.ColorRole.WindowText, TEXT),
                         (QPalette.ColorRole.Base, PANEL), (QPalette.ColorRole.AlternateBase, BG),
                         (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, PANEL),
                         (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.ToolTipBase, PANEL),
                         (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.Highlight, ACCENT),
                         (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))):
        pal.setColor(role, colour)
    return pal
