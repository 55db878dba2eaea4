"""A preview strip of one positive and its image negatives, for the asset metadata."""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from eliq_pipeline.core.images import png_bytes
from eliq_pipeline.supervision.image_cache import Store, get_image


def preview_png(store: Store, positive: dict[str, Any], negatives: Sequence[dict[str, Any]], size: int = 128) -> bytes:
    """A strip: the positive, then each image negative of it, labelled aspect/method."""
    from PIL import ImageDraw

    tiles = [(get_image(store, positive["image_sha256"]), "positive")]
    tiles += [(get_image(store, n["image_sha256"]), f"{n['aspect']}/{n['method']}") for n in negatives if n["image_sha256"]]
    strip = Image.new("RGB", (size * len(tiles), size + 14), "white")
    draw = ImageDraw.Draw(strip)
    for index, (image, label) in enumerate(tiles):
        strip.paste(image.resize((size, size)), (index * size, 14))
        draw.text((index * size + 2, 1), label[:22], fill="black")
    return png_bytes(strip)


def preview_markdown(png: bytes, prompt: str) -> str:
    import base64

    return f"Prompt: {prompt}\n\n![negatives of one positive](data:image/png;base64,{base64.b64encode(png).decode()})"
