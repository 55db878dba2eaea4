"""Preview grids of positives and negatives fit the UI's metadata dialog (at most 640 px wide)."""

import io

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.supervision.image_cache import put_image
from eliq_pipeline.supervision.preview import MAX_WIDTH, TILE_GAP, grid_png, negative_label, positives_png, preview_png

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220), (220, 30, 220), (120, 60, 0)]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _solid(colour, size=(64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_grid_wraps_into_rows_within_the_width_and_places_each_tile():
    tiles = [(_solid(c), [f"tile {i}", "second line"]) for i, c in enumerate(COLOURS)]
    image = _decode(grid_png(tiles, columns=5, tile=100))
    size = 100
    assert image.width == TILE_GAP + 5 * (size + TILE_GAP) <= MAX_WIDTH
    pixels = np.asarray(image.convert("RGB"))
    cell_h = (image.height - TILE_GAP) // 2 - TILE_GAP  # two rows
    for index, colour in enumerate(COLOURS):
        x = TILE_GAP + (index % 5) * (size + TILE_GAP) + size // 2
        y = TILE_GAP + (index // 5) * (cell_h + TILE_GAP) + size // 2
        assert tuple(pixels[y, x]) == colour, index
    # labels are drawn under each tile (dark text pixels below the first tile)
    label_band = pixels[TILE_GAP + size + 1: TILE_GAP + size + 30, TILE_GAP: TILE_GAP + size]
    assert (label_band.sum(axis=-1) < 200).any()


def test_grid_never_exceeds_the_max_width_and_shrinks_tiles_to_fit():
    tiles = [(_solid(c, (512, 512)), ["a very long label that cannot fit in one tile at all"]) for c in COLOURS]
    assert _decode(grid_png(tiles, columns=7)).width <= MAX_WIDTH
    assert _decode(grid_png(tiles, columns=7, max_width=400)).width <= 400
    assert _decode(grid_png(tiles[:2], columns=5, tile=120)).width == TILE_GAP + 2 * (120 + TILE_GAP)  # 2 columns
    with pytest.raises(ValueError, match="at least one image"):
        grid_png([])
    with pytest.raises(ValueError, match="do not fit"):
        grid_png(tiles, columns=7, max_width=100)


def test_previews_of_positives_and_of_one_positive_with_its_negatives(tmp_path):
    store = LocalArtifactStore(tmp_path)
    positive = {"image_sha256": put_image(store, _solid(COLOURS[0])), "generator": "flux", "prompt": "a red square"}
    negatives = [
        {"image_sha256": put_image(store, _solid(COLOURS[1])), "aspect": "tec", "family": "conventional",
         "method": "gaussian_noise", "severity": 2},
        {"image_sha256": put_image(store, _solid(COLOURS[2])), "aspect": "aes", "family": "ai_specific",
         "method": "low_quality_generator", "severity": None},
        {"image_sha256": None, "aspect": "ali", "family": "conventional", "method": "shuffled_prompt", "severity": None},
    ]
    grid = _decode(preview_png(store, positive, negatives))
    assert grid.width == TILE_GAP + 3 * (120 + TILE_GAP)  # the positive and its two image negatives
    pixels = np.asarray(grid.convert("RGB"))
    assert [tuple(pixels[TILE_GAP + 60, TILE_GAP + i * 126 + 60]) for i in range(3)] == COLOURS[:3]
    assert negative_label(negatives[0]) == ["tec · conventional", "gaussian_noise L2"]
    assert negative_label(negatives[1]) == ["aes · ai_specific", "low_quality_generator"]

    many = [{**positive, "image_sha256": put_image(store, _solid(c))} for c in COLOURS * 3]
    grid = _decode(positives_png(store, many, limit=10))
    assert grid.width <= MAX_WIDTH and grid.height < 2 * grid.width  # 10 tiles: two rows of five
    assert grid.width == TILE_GAP + 5 * (120 + TILE_GAP)


def test_positives_preview_shows_every_generator_in_turn(tmp_path):
    store = LocalArtifactStore(tmp_path)
    rows = [{"image_sha256": put_image(store, _solid(c)), "generator": g, "prompt": "p"}
            for c, g in zip(COLOURS[:3], ["flux", "flux", "sd3"])]
    pixels = np.asarray(_decode(positives_png(store, rows, limit=2)).convert("RGB"))
    assert [tuple(pixels[TILE_GAP + 60, TILE_GAP + i * 126 + 60]) for i in range(2)] == [COLOURS[0], COLOURS[2]]
