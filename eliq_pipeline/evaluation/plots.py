"""Scatter plots of predicted score against MOS, rendered with matplotlib's Agg backend.

The PNG bytes go straight into asset metadata or a report. The figure is built with
`matplotlib.figure.Figure` and drawn on its own Agg canvas: no pyplot, no display, no global state.
Layout is fixed margins around one axes box (so the plot area sits at the same pixels for any
input), 1/2/5 x 10^k ticks with light grid lines, and translucent points so dense regions of a
3,000-image benchmark still read as dense.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

# Margins around the axes box (pixels): room for tick labels, axis labels and the title.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 24, 44, 58
# Fraction of the data range added on each side so extreme points do not sit on the frame.
DATA_PAD = 0.04
# At 72 dpi one typographic point is one pixel, so font and marker sizes below are in pixels.
_DPI = 72
_AXIS, _GRID, _TEXT = "#282828", "#e4e4e4", "#141414"


@dataclass(frozen=True)
class Axes:
    """Pixel box of the plotting area (image coordinates, y down) and the data range it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        py = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)
        return px, py


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
    """PNG bytes (RGB, width x height) of a scatter plot of pred (x) against mos (y).

    Non-finite pairs are dropped. Same input gives the same bytes.
    """
    if width < MARGIN_LEFT + MARGIN_RIGHT + 50 or height < MARGIN_TOP + MARGIN_BOTTOM + 50:
        raise ValueError(f"{width}x{height} leaves no room for the axes")
    p, m = _finite_pairs(pred, mos)
    box = axes_for(p, m, width, height)

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    ax = fig.add_axes((box.left / width, MARGIN_BOTTOM / height,
                       (box.right - box.left) / width, (box.bottom - box.top) / height))
    ax.set_xlim(*box.x_range)
    ax.set_ylim(*box.y_range)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(direction="out", length=5, color=_AXIS, labelcolor=_TEXT, labelsize=12)
    ax.grid(color=_GRID, linewidth=1)
    ax.set_axisbelow(True)
    for spine in ax.spines.values():
        spine.set(color=_AXIS, linewidth=1)

    # Marker size is an area in points^2; at 72 dpi a diameter of 2r points is 2r pixels.
    ax.scatter(p, m, s=(2 * point_radius) ** 2, c=[np.array(point_color) / 255],
               alpha=point_alpha / 255, linewidths=0)
    if p.size == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color=_TEXT)
    if title:
        fig.text(0.5, 1 - MARGIN_TOP / 2 / height, title, ha="center", va="center", fontsize=16, color=_TEXT)
    ax.set_xlabel(xlabel, fontsize=14, color=_TEXT)
    ax.set_ylabel(ylabel, fontsize=14, color=_TEXT)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])  # opaque figure: drop alpha
    if image.size != (width, height):  # pragma: no cover - guards float rounding of figsize * dpi
        image = image.resize((width, height))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)  # PIL writes no timestamp/version chunks
    return out.getvalue()
