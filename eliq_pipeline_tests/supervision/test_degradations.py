from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from eliq_pipeline.supervision.degradations import (
    AESTHETIC_OPS,
    ASPECTS,
    DEGRADATIONS,
    FAMILIES,
    apply_degradation,
    LEVELS,
    blockiness,
    brightness,
    colour_shift,
    colourfulness,
    contrast,
    degradations_for,
    gaussian_noise,
    jpeg_recompress,
    noise_level,
    offline_aesthetic_edit,
    sharpness,
    structure_change,
)


def _smooth_image(w: int = 72, h: int = 64) -> Image.Image:
    """Colourful, smooth (like the tiny generators' output): gradients plus soft blobs."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    blobs = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(h, w, 3)), sigma=(6, 6, 0))
    blobs = blobs / np.abs(blobs).max()
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.6 - 0.3 * x * y], axis=-1) + 0.15 * blobs
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _detailed_image(size: int = 96) -> Image.Image:
    """Natural-like detail at every scale (fine texture, edges, colour)."""
    rng = np.random.default_rng(11)
    layers = [ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(s, s, 0)) for s in (0.7, 2, 6)]
    rgb = 0.5 + sum(0.25 * layer / layer.std() / 2 for layer in layers)
    rgb[size // 3 : size // 2, :, :] = [0.9, 0.2, 0.1]  # a sharp-edged band
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


IMAGES = {"smooth": _smooth_image(), "detailed": _detailed_image()}


def test_registry_entries_have_aspect_and_family() -> None:
    assert {"jpeg_recompress", "gaussian_noise", "offline_aesthetic_edit"} <= set(DEGRADATIONS.names())
    for name in DEGRADATIONS.names():
        meta = DEGRADATIONS.meta(name)
        assert meta["aspect"] in ASPECTS and meta["family"] in FAMILIES
    assert degradations_for("tec", "conventional") == [
        "downscale_upscale", "elastic_warp", "gaussian_blur", "gaussian_noise", "jpeg_recompress"]
    assert degradations_for("aes") == [
        "colour_cast", "contrast_crush", "desaturate", "exposure_shift", "offline_aesthetic_edit"]


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_every_degradation_contract(name: str, kind: str) -> None:
    image = IMAGES[kind]
    out, params = apply_degradation(name, image, np.random.default_rng(0))
    assert out.mode == "RGB" and out.size == image.size
    assert not np.array_equal(np.asarray(out), np.asarray(image))
    # deterministic for a seed
    again, params_again = apply_degradation(name, image, np.random.default_rng(0))
    assert params == params_again and np.array_equal(np.asarray(out), np.asarray(again))
    # the returned params alone reproduce the output (what the negative manifest stores)
    replay, _ = apply_degradation(name, image, np.random.default_rng(999), **params)
    assert np.array_equal(np.asarray(out), np.asarray(replay))
    # another seed samples other params
    _, other = apply_degradation(name, image, np.random.default_rng(1))
    assert other != params


def test_degradations_accept_any_mode() -> None:
    grey = IMAGES["smooth"].convert("L")
    for name in DEGRADATIONS.names():
        out, _ = apply_degradation(name, grey, np.random.default_rng(0))
        assert out.mode == "RGB" and out.size == grey.size


@pytest.mark.parametrize("seed", range(4))
def test_noise_raises_noise_level(seed: int) -> None:
    for image in IMAGES.values():
        out, params = gaussian_noise(image, np.random.default_rng(seed))
        assert 0.08 <= params["sigma"] <= 0.2
        assert noise_level(out) > noise_level(image) + 0.04
    assert noise_level(IMAGES["smooth"]) < 0.01


@pytest.mark.parametrize("seed", range(4))
def test_jpeg_removes_fine_detail_and_adds_blocking(seed: int) -> None:
    detailed = IMAGES["detailed"]
    out, params = jpeg_recompress(detailed, np.random.default_rng(seed))
    assert 3 <= params["rounds"] <= 6 and all(5 <= q <= 20 for q in params["qualities"])
    # fine-scale texture (what the Immerkaer residual sees) is quantised away ...
    assert noise_level(out) < 0.7 * noise_level(detailed)
    # ... and 8x8 block edges appear
    assert blockiness(out) > blockiness(detailed) + 0.2
    smooth = IMAGES["smooth"]
    assert blockiness(jpeg_recompress(smooth, np.random.default_rng(seed))[0]) > 1.5 * blockiness(smooth)


def test_jpeg_explicit_params() -> None:
    out, params = jpeg_recompress(IMAGES["smooth"], np.random.default_rng(0), qualities=[10, 12, 8])
    assert params == {"rounds": 3, "qualities": [10, 12, 8]}
    with pytest.raises(ValueError):
        jpeg_recompress(IMAGES["smooth"], np.random.default_rng(0), qualities=[0])
    with pytest.raises(ValueError):
        jpeg_recompress(IMAGES["smooth"], np.random.default_rng(0), rounds=2, qualities=[10, 12, 8])


@pytest.mark.parametrize("seed", range(6))
def test_aesthetic_edit_keeps_size_and_changes_colour_stats(seed: int) -> None:
    image = IMAGES["smooth"]
    out, params = offline_aesthetic_edit(image, np.random.default_rng(seed))
    assert out.size == image.size
    assert 2 <= len(params["ops"]) <= 3
    assert all(op["op"] in AESTHETIC_OPS for op in params["ops"])
    before, after = np.asarray(image, dtype=float), np.asarray(out, dtype=float)
    mean_shift = np.abs(before.mean(axis=(0, 1)) - after.mean(axis=(0, 1))).max()
    std_shift = np.abs(before.std(axis=(0, 1)) - after.std(axis=(0, 1))).max()
    assert mean_shift > 3 or std_shift > 3 or abs(colourfulness(out) - colourfulness(image)) > 5


@pytest.mark.parametrize("op", sorted(AESTHETIC_OPS))
def test_each_aesthetic_op_alone(op: str) -> None:
    image = IMAGES["smooth"]
    out, params = offline_aesthetic_edit(image, np.random.default_rng(0), ops=[op])
    assert out.size == image.size and params["ops"][0]["op"] == op
    assert not np.array_equal(np.asarray(out), np.asarray(image))
    if op in ("desaturate", "colour_cast"):
        assert colourfulness(out) < colourfulness(image)
    if op == "contrast_crush":
        assert np.asarray(out, dtype=float).std() < np.asarray(image, dtype=float).std()
    if op == "tilt":
        # no empty (black) corners after the inscribed crop
        corners = np.asarray(out)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() > 20


def test_aesthetic_edit_rejects_unknown_op() -> None:
    with pytest.raises(ValueError, match="unknown aesthetic op"):
        offline_aesthetic_edit(IMAGES["smooth"], np.random.default_rng(0), ops=["sepia"])


def test_measurables() -> None:
    flat = Image.new("RGB", (32, 32), (120, 120, 120))
    assert sharpness(flat) == 0 and noise_level(flat) == 0 and colourfulness(flat) == 0
    assert sharpness(IMAGES["detailed"]) > sharpness(IMAGES["smooth"])
    assert colourfulness(Image.new("RGB", (8, 8), (255, 0, 0))) > 50
    blurred = Image.fromarray(
        ndimage.gaussian_filter(np.asarray(IMAGES["detailed"]), sigma=(1.5, 1.5, 0)).astype(np.uint8)
    )
    assert sharpness(blurred) < 0.5 * sharpness(IMAGES["detailed"])


# graded degradation -> (measurable, sign): level 2 must move it further than level 1, and both in
# the intended direction (sign 0: either direction, by magnitude)
GRADED = {
    "jpeg_recompress": (blockiness, +1),
    "gaussian_noise": (noise_level, +1),
    "gaussian_blur": (sharpness, -1),
    "downscale_upscale": (sharpness, -1),
    "colour_cast": (colour_shift, +1),  # pair measurables: m(out, image)
    "elastic_warp": (structure_change, +1),
    "desaturate": (colourfulness, -1),
    "contrast_crush": (contrast, -1),
    "exposure_shift": (brightness, 0),
}


@pytest.mark.parametrize("name", sorted(GRADED))
def test_graded_levels_are_ordered_by_their_measurable(name: str) -> None:
    measure, sign = GRADED[name]
    image = IMAGES["detailed"]
    if measure in (colour_shift, structure_change):
        measure, base = (lambda out, pair=measure: pair(out, image)), 0.0
    else:
        base = measure(image)
    for seed in range(3):
        moved = {}
        for level in LEVELS:
            out, params = apply_degradation(name, image, np.random.default_rng(seed), level=level)
            assert params["level"] == level
            delta = measure(out) - base
            moved[level] = abs(delta) if sign == 0 else sign * delta
            assert moved[level] > 0, (name, level, seed, delta)
            # the recorded params alone (with the level) reproduce it
            again, _ = apply_degradation(name, image, np.random.default_rng(99), **params)
            assert np.array_equal(np.asarray(out), np.asarray(again))
        assert moved[2] > moved[1], (name, seed, moved)


def test_ungraded_calls_draw_as_before() -> None:
    """level=None keeps each degradation's original range and draws: the tiny profile's cached
    negatives stay valid."""
    out, params = gaussian_noise(IMAGES["smooth"], np.random.default_rng(0))
    assert "level" not in params and 0.08 <= params["sigma"] <= 0.2
    _, jpeg = jpeg_recompress(IMAGES["smooth"], np.random.default_rng(0))
    assert "level" not in jpeg and 3 <= jpeg["rounds"] <= 6


@pytest.mark.parametrize("name", sorted(GRADED))
def test_unknown_level_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="level"):
        apply_degradation(name, IMAGES["smooth"], np.random.default_rng(0), level=3)


def test_elastic_warp_moves_structure_not_tone() -> None:
    image = IMAGES["detailed"]
    assert structure_change(image, image) == 0.0
    out, params = apply_degradation("elastic_warp", image, np.random.default_rng(0), level=2)
    # a resampling along a displacement field: edges move, the histogram of tones barely does
    assert structure_change(out, image) > 0.2
    assert abs(brightness(out) - brightness(image)) < 0.01 and abs(contrast(out) - contrast(image)) < 0.02
    # the displacement std in pixels is the recorded fraction of the short side
    assert 0.012 <= params["amplitude_fraction"] <= 0.024 and isinstance(params["seed"], int)
