"""Preview grids of supervision images for the asset metadata: some positives of an era, and one
positive with its image negatives. At most `max_width` (640) pixels wide, so a grid fits the
Dagster UI's metadata dialog; each tile is labelled underneath."""

from __future__ import annotations

from itertools import zip_longest
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from eliq_pipeline.core.images import png_bytes
from eliq_pipeline.supervision.image_cache import Store, get_image

MAX_WIDTH = 640
TILE_GAP = 6  # pixels between tiles and around the grid
LABEL_LINES = 2


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> str:
    """text cut (with an ellipsis) to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def grid_png(tiles: Sequence[tuple[Image.Image, Sequence[str]]], *, columns: int = 5, max_width: int = MAX_WIDTH,
             tile: int = 0) -> bytes:
    """PNG of the images in a grid, `columns` per row (fewer when there are fewer images), each
    shown square at `tile` pixels (default: as large as `max_width` allows, at most 160) with up to
    two label lines under it. The grid is never wider than max_width."""
    if not tiles:
        raise ValueError("a preview grid needs at least one image")
    columns = max(1, min(columns, len(tiles)))
    largest = (max_width - TILE_GAP * (columns + 1)) // columns
    size = min(tile or 160, largest)
    if size < 16:
        raise ValueError(f"{columns} columns do not fit {max_width} px")
    font = _font()
    line_height = 15
    cell_h = size + LABEL_LINES * line_height + 4
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (TILE_GAP + columns * (size + TILE_GAP), TILE_GAP + rows * (cell_h + TILE_GAP)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, labels) in enumerate(tiles):
        x = TILE_GAP + (index % columns) * (size + TILE_GAP)
        y = TILE_GAP + (index // columns) * (cell_h + TILE_GAP)
        grid.paste(image.convert("RGB").resize((size, size)), (x, y))
        for line, text in enumerate(list(labels)[:LABEL_LINES]):
            draw.text((x, y + size + 2 + line * line_height), _fit(str(text), font, size, draw), fill="#141414",
                      font=font)
    return png_bytes(grid)


def negative_label(negative: dict[str, Any]) -> list[str]:
    """Two label lines of a negative: aspect and family, then method (and its severity level)."""
    method = negative["method"] + (f" L{negative['severity']}" if negative.get("severity") is not None else "")
    return [f"{negative['aspect']} · {negative['family']}", method]


def preview_png(store: Store, positive: dict[str, Any], negatives: Sequence[dict[str, Any]], size: int = 120,
                columns: int = 5) -> bytes:
    """A grid: the positive first, then each image negative of it, labelled aspect/family/method."""
    tiles = [(get_image(store, positive["image_sha256"]), ["positive", positive.get("generator", "")])]
    tiles += [(get_image(store, n["image_sha256"]), negative_label(n)) for n in negatives if n["image_sha256"]]
    return grid_png(tiles, columns=columns, tile=size)


def positives_png(store: Store, positives: Sequence[dict[str, Any]], limit: int = 10, size: int = 120,
                  columns: int = 5) -> bytes:
    """A grid of `limit` positives, labelled with their generator and prompt: the first of each
    generator in turn, so every generator of the era is shown."""
    by_generator: dict[str, list[dict[str, Any]]] = {}
    for row in positives:
        by_generator.setdefault(row.get("generator", ""), []).append(row)
    turns = zip_longest(*by_generator.values())
    chosen = [row for turn in turns for row in turn if row is not None][:limit]
    tiles = [(get_image(store, r["image_sha256"]), [r.get("generator", ""), r.get("prompt", "")]) for r in chosen]
    return grid_png(tiles, columns=columns, tile=size)
