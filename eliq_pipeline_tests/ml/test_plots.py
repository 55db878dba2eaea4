import io

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.ml.plots import axes_for, nice_ticks, scatter_png

POINT = (200, 0, 0)  # a colour nothing else in the plot uses


def _decode(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_of_requested_size():
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 500)
    image = _decode(scatter_png(mos + rng.normal(0, 0.3, 500), mos, "AGIQA-3K", "s_vis", "MOS"))
    assert image.format == "PNG" and image.size == (640, 480) and image.mode == "RGB"
    assert _decode(scatter_png([1, 2, 3], [3, 1, 2], width=320, height=240)).size == (320, 240)


def test_points_land_inside_the_axes_at_their_positions():
    pred = np.array([0.0, 10.0, 5.0, 2.5, 7.5])
    mos = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    image = _decode(scatter_png(pred, mos, "t", "x", "y", point_color=POINT, point_alpha=255, point_radius=2))
    pixels = np.asarray(image)
    ys, xs = np.nonzero(np.all(pixels == POINT, axis=-1))
    axes = axes_for(pred, mos, 640, 480)
    assert xs.size > 0
    assert xs.min() > axes.left and xs.max() < axes.right
    assert ys.min() > axes.top and ys.max() < axes.bottom
    # Every point's centre pixel is painted; the lowest-left / highest-right points sit near
    # the corners of the box (the data padding keeps them just inside).
    px, py = axes.to_pixel(pred, mos)
    for x, y in zip(np.rint(px).astype(int), np.rint(py).astype(int)):
        assert tuple(pixels[y, x]) == POINT
    assert px[0] - axes.left < 0.06 * (axes.right - axes.left)
    assert axes.bottom - py[0] < 0.06 * (axes.bottom - axes.top)
    assert axes.right - px[1] < 0.06 * (axes.right - axes.left)


def test_text_and_frame_are_drawn():
    pixels = np.asarray(_decode(scatter_png([1, 2, 3], [1, 2, 3], "a title", "pred", "mos")).convert("L"))
    axes = axes_for(np.array([1.0, 2, 3]), np.array([1.0, 2, 3]), 640, 480)
    assert (pixels[: axes.top - 5] < 128).any()  # title
    assert (pixels[axes.bottom + 20:] < 128).any()  # x tick labels and label
    assert (pixels[:, : axes.left - 20] < 128).any()  # y tick labels and rotated label
    assert (pixels[axes.top:axes.bottom, axes.left] < 100).all()  # frame's left edge


def test_degenerate_inputs():
    _decode(scatter_png([], [], "empty"))
    _decode(scatter_png([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))  # zero-width ranges
    _decode(scatter_png([1.0, np.nan, 3.0], [1.0, 2.0, np.inf]))  # non-finite pairs dropped
    with pytest.raises(ValueError, match="3 values"):
        scatter_png([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no room"):
        scatter_png([1, 2], [1, 2], width=100, height=100)


def test_nice_ticks():
    assert nice_ticks(-12, -1.5) == [-12, -10, -8, -6, -4, -2]
    assert nice_ticks(0.5, 4.6) == [1, 2, 3, 4]
    ticks = nice_ticks(0.096, 0.354)
    assert ticks[0] == pytest.approx(0.1) and ticks[-1] == pytest.approx(0.35) and len(ticks) == 6
    with pytest.raises(ValueError):
        nice_ticks(1, 1)
