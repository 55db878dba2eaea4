"""Image helpers shared by generation, degradation, embedding and benchmarking."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Sequence, Union

from PIL import Image

# Refuse absurd images early (decompression bombs); 64 MP covers every benchmark we read.
Image.MAX_IMAGE_PIXELS = 64_000_000


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any mode (palette, alpha, CMYK, 16-bit, greyscale) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """Lossless, deterministic encoding used for every stored image."""
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, fresh: bool = False) -> str:
    """Full-content hash, memoised on (path, size, mtime): weights and benchmark images that
    several steps of a run fingerprint are read once. `fresh` reads the file again (a seal check
    must see an edit that kept size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if fresh or key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode fully (not lazily) so truncated files fail here, naming the file."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types; callers need one clear message
        raise ValueError(f"cannot decode image {name}: {exc}") from exc
    return to_rgb(image)


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    return decode_image(path.read_bytes(), name=str(path))


ImageInput = Union[Image.Image, str, Path]


def as_images(images: Sequence[ImageInput]) -> list[Image.Image]:
    """PIL images as they are; paths (str or Path) read and decoded, RGB, each named if it fails.
    A single image or path is refused: the callers pair images with prompts, list with list."""
    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("pass a list of images or paths (one image: [image]), got a single "
                        f"{type(images).__name__}")
    out = []
    for position, image in enumerate(images):
        if isinstance(image, Image.Image):
            out.append(image)
        elif isinstance(image, (str, Path)):
            if not Path(image).is_file():
                raise FileNotFoundError(f"image {position}: file not found: {image}")
            out.append(load_image(image))
        else:
            raise TypeError(f"image {position}: expected a PIL image or a path, got {type(image).__name__}")
    return out

