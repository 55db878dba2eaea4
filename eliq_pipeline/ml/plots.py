"""Scatter plots of predicted score against MOS, drawn with PIL alone (no plotting dependency).

The PNG bytes go straight into asset metadata or a report; layout is fixed margins around one
axes box, "nice" (1/2/5 x 10^k) ticks with light grid lines, translucent points so dense regions
of a 3,000-image benchmark still read as dense.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Margins around the axes box (pixels): room for tick labels, axis labels and the title.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 24, 44, 58
# Fraction of the data range added on each side so extreme points do not sit on the frame.
DATA_PAD = 0.04

_BACKGROUND = (255, 255, 255)
_AXIS = (40, 40, 40)
_GRID = (228, 228, 228)
_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class Axes:
    """Pixel box of the plotting area and the data range it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        py = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)  # image y grows downwards
        return px, py


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable bundled font (Pillow >= 10.1 with FreeType)
    except TypeError:  # pragma: no cover - older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Tick values at a 1, 2 or 5 x 10^k step covering [low, high] with about `target` ticks."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(f"need a finite range with high > low, got [{low}, {high}]")
    magnitude = 10.0 ** math.floor(math.log10((high - low) / max(target - 1, 1)))

    def count(step: float) -> int:
        return math.floor(high / step + 1e-9) - math.ceil(low / step - 1e-9) + 1

    # The 1/2/5 step whose tick count is closest to target (the coarser one on a tie).
    steps = [m * magnitude for m in (10.0, 5.0, 2.0, 1.0, 0.5)]
    step = min(steps, key=lambda st: abs(count(st) - target))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value = first + len(ticks) * step
    return ticks


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _data_range(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    span = high - low
    if span <= 0:  # all equal: a unit window around the value
        return low - 0.5, high + 0.5
    return low - DATA_PAD * span, high + DATA_PAD * span


def axes_for(pred: np.ndarray, mos: np.ndarray, width: int, height: int) -> Axes:
    """The axes box and data ranges scatter_png uses for these (finite) values and size."""
    return Axes(MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM,
                _data_range(pred), _data_range(mos))


def _finite_pairs(pred: Sequence[float] | np.ndarray, mos: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    m = np.asarray(mos, dtype=np.float64).reshape(-1)
    if p.shape != m.shape:
        raise ValueError(f"pred has {p.size} values but mos has {m.size}")
    keep = np.isfinite(p) & np.isfinite(m)  # a NaN score cannot be placed; it is left out
    return p[keep], m[keep]


def scatter_png(
    pred: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    title: str = "",
    xlabel: str = "predicted score",
    ylabel: str = "MOS",
    *,
    width: int = 640,
    height: int = 480,
    point_color: tuple[int, int, int] = (31, 119, 180),
    point_alpha: int = 110,
    point_radius: float = 3.0,
) -> bytes:
    """PNG bytes of a scatter plot of pred (x) against mos (y). Non-finite pairs are dropped."""
    if width < MARGIN_LEFT + MARGIN_RIGHT + 50 or height < MARGIN_TOP + MARGIN_BOTTOM + 50:
        raise ValueError(f"{width}x{height} leaves no room for the axes")
    p, m = _finite_pairs(pred, mos)
    axes = axes_for(p, m, width, height)
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    small, medium = _font(12), _font(14)

    # Grid and tick labels.
    for axis in ("x", "y"):
        low, high = axes.x_range if axis == "x" else axes.y_range
        ticks = nice_ticks(low, high)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else (high - low)
        for value in ticks:
            label = _tick_label(value, step)
            if axis == "x":
                px = float(axes.to_pixel(np.array(value), np.array(low))[0])
                draw.line([(px, axes.top), (px, axes.bottom)], fill=_GRID)
                draw.line([(px, axes.bottom), (px, axes.bottom + 5)], fill=_AXIS)
                draw.text((px, axes.bottom + 8), label, fill=_TEXT, font=small, anchor="mt")
            else:
                py = float(axes.to_pixel(np.array(low), np.array(value))[1])
                draw.line([(axes.left, py), (axes.right, py)], fill=_GRID)
                draw.line([(axes.left - 5, py), (axes.left, py)], fill=_AXIS)
                draw.text((axes.left - 8, py), label, fill=_TEXT, font=small, anchor="rm")

    # Points: each disk adds coverage, alpha = 1 - (1 - a)^k for k overlapping disks, so dense
    # regions darken the way stacked translucent markers do. Disks are clipped to the frame's
    # inside (the data padding keeps centres in; this keeps the whole marker in).
    px, py = axes.to_pixel(p, m)
    counts = np.zeros((height, width), dtype=np.int32)
    span = int(math.ceil(point_radius))
    dy, dx = np.mgrid[-span:span + 1, -span:span + 1]
    inside = dx * dx + dy * dy <= point_radius * point_radius
    dx, dy = dx[inside], dy[inside]
    cx = np.rint(px).astype(np.int64)[:, None] + dx[None, :]
    cy = np.rint(py).astype(np.int64)[:, None] + dy[None, :]
    ok = (cx > axes.left) & (cx < axes.right) & (cy > axes.top) & (cy < axes.bottom)
    np.add.at(counts, (cy[ok], cx[ok]), 1)
    alpha = 1.0 - (1.0 - point_alpha / 255.0) ** counts
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels * (1.0 - alpha[..., None]) + np.array(point_color, dtype=np.float64) * alpha[..., None]
    image = Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([axes.left, axes.top, axes.right, axes.bottom], outline=_AXIS)
    if p.size == 0:
        draw.text(((axes.left + axes.right) / 2, (axes.top + axes.bottom) / 2), "no data",
                  fill=_TEXT, font=medium, anchor="mm")

    # Title, x label, rotated y label.
    if title:
        draw.text((width / 2, MARGIN_TOP / 2), title, fill=_TEXT, font=_font(16), anchor="mm")
    draw.text(((axes.left + axes.right) / 2, height - 14), xlabel, fill=_TEXT, font=medium, anchor="ms")
    if ylabel:
        box = draw.textbbox((0, 0), ylabel, font=medium)
        text = Image.new("RGBA", (box[2] - box[0] + 4, box[3] - box[1] + 4), (255, 255, 255, 0))
        ImageDraw.Draw(text).text((2 - box[0], 2 - box[1]), ylabel, fill=(*_TEXT, 255), font=medium)
        text = text.rotate(90, expand=True)
        x = 8
        y = int((axes.top + axes.bottom) / 2 - text.height / 2)
        image.paste(text, (x, y), text)

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
