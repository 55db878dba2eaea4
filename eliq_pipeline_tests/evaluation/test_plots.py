import io

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.evaluation.plots import axes_for, scatter_png

POINT = (200, 0, 0)  # a colour nothing else in the plot uses


def _decode(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(_decode(data))


def test_png_of_requested_size_and_deterministic():
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 500)
    pred = mos + rng.normal(0, 0.3, 500)
    data = scatter_png(pred, mos, "AGIQA-3K", "s_vis", "MOS")
    image = _decode(data)
    assert image.format == "PNG" and image.size == (640, 480) and image.mode == "RGB"
    assert not image.text  # no Software / timestamp chunks that would make bytes vary
    assert scatter_png(pred, mos, "AGIQA-3K", "s_vis", "MOS") == data  # same input, same bytes
    assert _decode(scatter_png([1, 2, 3], [3, 1, 2], width=333, height=241)).size == (333, 241)


def test_points_land_inside_the_axes_at_their_positions():
    pred = np.array([0.0, 10.0, 5.0, 2.5, 7.5])
    mos = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    pixels = _pixels(scatter_png(pred, mos, "t", "x", "y", point_color=POINT, point_alpha=255, point_radius=2))
    ys, xs = np.nonzero(np.all(pixels == POINT, axis=-1))
    axes = axes_for(pred, mos, 640, 480)
    assert xs.size > 0
    assert xs.min() > axes.left and xs.max() < axes.right
    assert ys.min() > axes.top and ys.max() < axes.bottom
    # Every point's centre pixel (markers snap to the nearest pixel) is painted; the lowest-left /
    # highest-right points sit near the corners of the box (the data padding keeps them inside).
    px, py = axes.to_pixel(pred, mos)
    for x, y in zip(np.floor(px + 0.5).astype(int), np.floor(py + 0.5).astype(int)):
        assert tuple(pixels[y, x]) == POINT
    assert px[0] - axes.left < 0.06 * (axes.right - axes.left)
    assert axes.bottom - py[0] < 0.06 * (axes.bottom - axes.top)
    assert axes.right - px[1] < 0.06 * (axes.right - axes.left)
    # Markers are disks of the requested radius: 5 disks of radius 2 (area ~12.6 px each, plus
    # an anti-aliased rim).
    tinted = (pixels[..., 0].astype(int) - pixels[..., 1] > 50).sum()
    assert 5 * 10 <= tinted <= 5 * 30


def test_overlapping_translucent_points_darken():
    stacked = _pixels(scatter_png([1.0] * 4 + [3.0], [1.0] * 4 + [3.0], point_color=POINT, point_alpha=100))
    axes = axes_for(np.array([1.0, 3.0]), np.array([1.0, 3.0]), 640, 480)
    (x1, x3), (y1, y3) = (np.floor(v + 0.5).astype(int) for v in axes.to_pixel(np.array([1.0, 3.0]), np.array([1.0, 3.0])))
    one, four = stacked[y3, x3].astype(int), stacked[y1, x1].astype(int)
    assert one[0] > 190 and one[1] < 255 and one[2] < 255  # tinted towards red, not opaque
    assert four[1] < one[1] and four[2] < one[2]  # four stacked points cover more than one


def test_text_and_frame_are_drawn():
    pixels = np.asarray(_decode(scatter_png([1, 2, 3], [1, 2, 3], "a title", "pred", "mos")).convert("L"))
    no_title = np.asarray(_decode(scatter_png([1, 2, 3], [1, 2, 3], "", "pred", "mos")).convert("L"))
    axes = axes_for(np.array([1.0, 2, 3]), np.array([1.0, 2, 3]), 640, 480)
    assert (pixels[: axes.top - 5] < 128).any()  # title
    assert (no_title[: axes.top - 5] == 255).all()  # nothing above the axes without a title
    assert (pixels[axes.bottom + 20:] < 128).any()  # x tick labels and label
    assert (pixels[:, : axes.left - 20] < 128).any()  # y tick labels and rotated label
    assert (pixels[axes.top:axes.bottom, axes.left] < 100).all()  # frame's left edge
    assert (pixels[axes.top, axes.left:axes.right] < 100).all()  # frame's top edge


def test_non_finite_pairs_are_dropped():
    clean = scatter_png([1.0, 4.0], [1.0, 2.0], "t")
    assert scatter_png([1.0, np.nan, 4.0, 2.0], [1.0, 2.0, 2.0, np.inf], "t") == clean
    assert scatter_png([np.nan], [np.nan], "t") == scatter_png([], [], "t")


def test_degenerate_inputs():
    empty = np.asarray(_decode(scatter_png([], [], "empty")).convert("L"))
    axes = axes_for(np.array([]), np.array([]), 640, 480)
    cy, cx = (axes.top + axes.bottom) // 2, (axes.left + axes.right) // 2
    assert (empty[cy - 10:cy + 10, cx - 40:cx + 40] < 128).any()  # "no data" in the middle
    _decode(scatter_png([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))  # zero-width ranges
    with pytest.raises(ValueError, match="3 values"):
        scatter_png([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no room"):
        scatter_png([1, 2], [1, 2], width=100, height=100)


def test_axes_for_pads_the_data_range():
    axes = axes_for(np.array([0.0, 10.0]), np.array([2.0, 2.0]), 640, 480)
    assert (axes.left, axes.top, axes.right, axes.bottom) == (72, 44, 616, 422)
    assert axes.x_range == pytest.approx((-0.4, 10.4))
    assert axes.y_range == (1.5, 2.5)
    assert axes_for(np.array([]), np.array([]), 640, 480).x_range == (0.0, 1.0)


# ---------------------------------------------------------------- curves, bars, Markdown images

from eliq_pipeline.evaluation.plots import SERIES_COLORS, accuracy_bars_png, curves_png, image_markdown  # noqa: E402


def _colour_pixels(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).sum(axis=-1) < 30).sum())


def test_curves_png_draws_each_series_in_its_colour_and_fits_the_dialog():
    data = curves_png({"train loss": [1.0, 0.6, 0.4, 0.3], "held-out loss": [1.1, 0.8, 0.7, 0.7]}, "t", "epoch", "loss",
                      x=[1, 2, 3, 4], marker_x=3)
    image = _decode(data)
    assert image.size == (640, 360) and image.mode == "RGB" and not image.text
    pixels = np.asarray(image)
    assert _colour_pixels(pixels, SERIES_COLORS[0]) > 200 and _colour_pixels(pixels, SERIES_COLORS[1]) > 200
    assert curves_png({"a": [1.0, 0.5]}, "t") == curves_png({"a": [1.0, 0.5]}, "t")  # deterministic
    assert _decode(curves_png({"a": [1.0, 0.5]}, width=400, height=300)).size == (400, 300)


def test_curves_png_smooths_noisy_series_and_draws_a_chance_line():
    rng = np.random.default_rng(0)
    noisy = list(np.exp(-np.arange(200) / 50) + rng.normal(0, 0.1, 200))
    raw = np.asarray(_decode(curves_png({"loss": noisy})))
    smoothed = np.asarray(_decode(curves_png({"loss": noisy}, smooth=10)))
    # the moving average is a solid line over a faded raw series: fewer fully coloured pixels
    assert _colour_pixels(smoothed, SERIES_COLORS[0]) < _colour_pixels(raw, SERIES_COLORS[0])
    with_chance = np.asarray(_decode(curves_png({"acc": [0.6, 0.7, 0.9]}, hline=(0.5, "chance"))))
    without = np.asarray(_decode(curves_png({"acc": [0.6, 0.7, 0.9]})))
    def greys(pixels):  # neutral mid greys: the dashed line (anti-aliased); grid lines are lighter
        p = pixels.astype(int)
        return int(((p.max(axis=-1) - p.min(axis=-1) < 8) & (p[..., 0] > 100) & (p[..., 0] < 215)).sum())

    assert greys(with_chance) > greys(without) + 150  # the dashed line
    # gaps and empty input render, "no data" in the middle
    _decode(curves_png({"acc": [0.6, float("nan"), 0.9]}))
    empty = np.asarray(_decode(curves_png({})).convert("L"))
    assert (empty[150:210, 260:380] < 128).any()
    with pytest.raises(ValueError, match="x has 2 values"):
        curves_png({"a": [1, 2, 3]}, x=[1, 2])


def test_accuracy_bars_png_draws_one_bar_per_accuracy_and_the_chance_line():
    image = _decode(accuracy_bars_png({"tec": 0.94, "aes": 0.7, "ali": 0.375}, "held-out"))
    assert image.size == (640, 360)
    pixels = np.asarray(image)
    for colour in SERIES_COLORS[:3]:
        assert _colour_pixels(pixels, colour) > 1000  # a filled bar each
    assert _colour_pixels(pixels, SERIES_COLORS[3]) == 0
    bars = [_colour_pixels(pixels, colour) for colour in SERIES_COLORS[:3]]
    assert bars[0] > bars[1] > bars[2]  # bar areas follow the accuracies
    assert _colour_pixels(pixels, "#888888") > 50  # chance line
    _decode(accuracy_bars_png({}))  # no data still renders


def test_image_markdown_embeds_the_png_as_a_data_uri_under_its_caption():
    import base64

    png = curves_png({"a": [1.0, 0.5]})
    text = image_markdown(png, "loss", "Training loss")
    caption, image = text.split("\n\n")
    assert caption == "Training loss" and image.startswith("![loss](data:image/png;base64,")
    assert base64.b64decode(image[len("![loss](data:image/png;base64,"):-1]) == png
    assert image_markdown(png, "loss") == image  # no caption: the image alone
