"""The content-addressed image cache of the supervision (paper 3.2).

Every image is content-addressed in the artifact store (`images/<sha[:2]>/<sha>.png`), and every
generation or degradation has a cache entry keyed by what determines its pixels, so:
  * an image of a generator shared by two eras is generated once and reused;
  * a run killed midway resumes: everything finished before the crash is found in the cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from PIL import Image

from eliq_pipeline.core.images import decode_image, png_bytes, sha256_bytes


class Store(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...


def stable_hash(*parts: Any, length: int = 32) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    return int(stable_hash(*parts, length=8), 16)


def image_key(sha: str) -> str:
    return f"images/{sha[:2]}/{sha}.png"


def put_image(store: Store, image: Image.Image) -> str:
    data = png_bytes(image)
    sha = sha256_bytes(data)
    if not store.exists(image_key(sha)):
        store.put_bytes(image_key(sha), data)
    return sha


def get_image(store: Store, sha: str) -> Image.Image:
    return decode_image(store.get_bytes(image_key(sha)), name=image_key(sha))


def cached_entry(store: Store, cache_key: str) -> dict[str, Any] | None:
    """A cache entry counts only if the image it points to is really there."""
    if not store.exists(cache_key):
        return None
    entry = json.loads(store.get_bytes(cache_key))
    return entry if store.exists(image_key(entry["image_sha256"])) else None
