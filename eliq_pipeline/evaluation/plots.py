"""Plots for asset metadata and reports, rendered with matplotlib's Agg backend: score-vs-MOS
scatters (`scatter_png`), training curves (`curves_png`) and accuracies against chance
(`accuracy_bars_png`); `image_markdown` embeds any of them in Markdown metadata as a data URI.

The PNG bytes go straight into asset metadata or a report. The figure is built with
`matplotlib.figure.Figure` and drawn on its own Agg canvas: no pyplot, no display, no global state.
Layout is fixed margins around one axes box (so the plot area sits at the same pixels for any
input), 1/2/5 x 10^k ticks with light grid lines, and translucent points so dense regions of a
3,000-image benchmark still read as dense. Every plot is at most 640 px wide, so it fits the
Dagster UI's metadata dialog.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
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
    _check_size(width, height)
    p, m = _finite_pairs(pred, mos)
    box = axes_for(p, m, width, height)

    fig, ax = _figure(box, width, height)
    # Marker size is an area in points^2; at 72 dpi a diameter of 2r points is 2r pixels.
    ax.scatter(p, m, s=(2 * point_radius) ** 2, c=[np.array(point_color) / 255],
               alpha=point_alpha / 255, linewidths=0)
    if p.size == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color=_TEXT)
    _labels(fig, ax, title, xlabel, ylabel, height)
    return _png(fig, width, height)


def _check_size(width: int, height: int) -> None:
    if width < MARGIN_LEFT + MARGIN_RIGHT + 50 or height < MARGIN_TOP + MARGIN_BOTTOM + 50:
        raise ValueError(f"{width}x{height} leaves no room for the axes")


def _figure(box: Axes, width: int, height: int):
    """A white figure of width x height pixels with one styled axes at `box` showing its ranges."""
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
    return fig, ax


def _labels(fig: Figure, ax, title: str, xlabel: str, ylabel: str, height: int) -> None:
    if title:
        fig.text(0.5, 1 - MARGIN_TOP / 2 / height, title, ha="center", va="center", fontsize=16, color=_TEXT)
    ax.set_xlabel(xlabel, fontsize=14, color=_TEXT)
    ax.set_ylabel(ylabel, fontsize=14, color=_TEXT)


def _png(fig: Figure, width: int, height: int) -> bytes:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])  # opaque figure: drop alpha
    if image.size != (width, height):  # pragma: no cover - guards float rounding of figsize * dpi
        image = image.resize((width, height))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)  # PIL writes no timestamp/version chunks
    return out.getvalue()


# Line colours of curves_png / accuracy_bars_png (matplotlib's tab10, colour-blind distinguishable).
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
CHANCE_COLOR = "#888888"


def curves_png(
    series: Mapping[str, Sequence[float]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    *,
    x: Sequence[float] | None = None,
    smooth: int = 0,
    hline: tuple[float, str] | None = None,
    marker_x: float | None = None,
    width: int = 640,
    height: int = 360,
) -> bytes:
    """PNG bytes of line plots, one line per named series (in order), with a legend.

    x gives the shared x positions (default 1..n); `smooth` > 1 overlays each series' moving
    average over that many points (the raw series stays, faded), for noisy per-step losses;
    `hline` = (y, label) draws a dashed reference line (chance level); `marker_x` a dotted vertical
    line (the kept epoch). Non-finite values are gaps. Same input gives the same bytes."""
    _check_size(width, height)
    values = {name: np.asarray(v, dtype=np.float64).reshape(-1) for name, v in series.items()}
    n = max((v.size for v in values.values()), default=0)
    xs = np.arange(1, n + 1, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
    if xs.size < n:
        raise ValueError(f"x has {xs.size} values but a series has {n}")
    finite_y = [v[np.isfinite(v)] for v in values.values()]
    all_y = np.concatenate(finite_y + ([np.array([hline[0]])] if hline else [])) if finite_y or hline else np.array([])
    box = Axes(MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM,
               _data_range(xs[:n]), _data_range(all_y))
    fig, ax = _figure(box, width, height)
    for index, (name, v) in enumerate(values.items()):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        line_x = xs[: v.size]
        if smooth > 1 and v.size >= smooth:
            ax.plot(line_x, v, color=color, linewidth=1, alpha=0.3)
            kernel = np.ones(smooth) / smooth
            ax.plot(line_x[smooth - 1:], np.convolve(v, kernel, mode="valid"), color=color, linewidth=2,
                    label=f"{name} (mean of {smooth})")
        else:
            ax.plot(line_x, v, color=color, linewidth=2, marker="o" if v.size <= 30 else None, markersize=4,
                    label=name)
    if hline is not None:
        ax.axhline(hline[0], color=CHANCE_COLOR, linestyle="--", linewidth=1.5, label=hline[1])
    if marker_x is not None:
        ax.axvline(marker_x, color=CHANCE_COLOR, linestyle=":", linewidth=1.5)
    if n == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color=_TEXT)
    elif values:
        ax.legend(fontsize=11, frameon=True, framealpha=0.85, loc="best")
    _labels(fig, ax, title, xlabel, ylabel, height)
    return _png(fig, width, height)


def accuracy_bars_png(
    accuracies: Mapping[str, float],
    title: str = "",
    ylabel: str = "accuracy",
    *,
    chance: float | None = 0.5,
    width: int = 640,
    height: int = 360,
) -> bytes:
    """PNG bytes of one bar per named accuracy (0..1 axis), its value printed above it, and a
    dashed line at `chance` (None: no line). Same input gives the same bytes."""
    _check_size(width, height)
    names = list(accuracies)
    heights = np.array([float(accuracies[k]) for k in names], dtype=np.float64)
    box = Axes(MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM,
               (-0.6, max(len(names), 1) - 0.4), (0.0, 1.08))
    fig, ax = _figure(box, width, height)
    positions = np.arange(len(names), dtype=np.float64)
    ax.bar(positions, np.nan_to_num(heights), width=0.6,
           color=[SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(names))])
    for pos, value in zip(positions, heights):
        ax.text(pos, (value if np.isfinite(value) else 0) + 0.02, f"{value:.3f}" if np.isfinite(value) else "n/a",
                ha="center", va="bottom", fontsize=12, color=_TEXT)
    ax.set_xticks(positions, names)
    ax.grid(axis="x", visible=False)
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle="--", linewidth=1.5)
        ax.text(box.x_range[1], chance + 0.01, f"chance {chance:g}", ha="right", va="bottom", fontsize=11,
                color=CHANCE_COLOR)
    if not names:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color=_TEXT)
    _labels(fig, ax, title, "", ylabel, height)
    return _png(fig, width, height)


def image_markdown(png: bytes, alt: str, caption: str = "") -> str:
    """Markdown showing a PNG inline (a data URI, so the metadata needs no file server), with an
    optional caption line above it."""
    image = f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
    return f"{caption}\n\n{image}" if caption else image
