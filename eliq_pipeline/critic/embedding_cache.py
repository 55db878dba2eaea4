"""Content-keyed cache of aspect embeddings (paper 3.3.2).

Key = (backbone/adapter fingerprint, image sha256, aspect, prompt hash): an embedding is computed
once, whichever era or benchmark asks for it. Embeddings are written in safetensors shards; a
shard's parquet index is written after its tensor file, so a crash never publishes a half shard,
and a re-run computes only what no finished shard holds.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import pyarrow as pa
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def prompt_hash(prompt: str | None) -> str:
    return "-" if prompt is None else hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class EmbeddingRequest:
    image_sha256: str
    aspect: str
    prompt: str | None  # only for the alignment aspect

    def key(self, namespace: str) -> str:
        raw = f"{namespace}|{self.image_sha256}|{self.aspect}|{prompt_hash(self.prompt)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.prefix = f"cache/embeddings/{namespace}"
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards: dict[str, torch.Tensor] = {}

    def index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            self._index = {}
            for key in self.store.list_keys(f"{self.prefix}/index/"):
                if key.endswith(".parquet"):
                    table = self.store.get_table(key).to_pydict()
                    for k, shard, row in zip(table["key"], table["shard"], table["row"]):
                        self._index[k] = (shard, row)
        return self._index

    def _shard(self, shard: str) -> torch.Tensor:
        if shard not in self._shards:
            data = self.store.get_bytes(f"{self.prefix}/shards/{shard}.safetensors")
            self._shards[shard] = load_safetensors(data)["embeddings"]
        return self._shards[shard]

    def get(self, requests: Sequence[EmbeddingRequest]) -> torch.Tensor:
        index = self.index()
        missing = [r for r in requests if r.key(self.namespace) not in index]
        if missing:
            raise KeyError(f"{len(missing)} embeddings are not cached, e.g. {missing[0]}")
        return torch.stack([self._shard(s)[row] for s, row in (index[r.key(self.namespace)] for r in requests)])

    def add(self, requests: Sequence[EmbeddingRequest], embeddings: torch.Tensor) -> None:
        shard = uuid.uuid4().hex[:16]
        self.store.put_bytes(f"{self.prefix}/shards/{shard}.safetensors",
                             save_safetensors({"embeddings": embeddings.detach().float().cpu().contiguous()}))
        keys = [r.key(self.namespace) for r in requests]
        table = pa.table({
            "key": keys, "shard": [shard] * len(keys), "row": list(range(len(keys))),
            "image_sha256": [r.image_sha256 for r in requests], "aspect": [r.aspect for r in requests],
            "prompt_hash": [prompt_hash(r.prompt) for r in requests],
        })
        self.store.put_table(f"{self.prefix}/index/{shard}.parquet", table)  # published last
        index = self.index()
        for row, key in enumerate(keys):
            index[key] = (shard, row)
        self._shards[shard] = embeddings.detach().float().cpu()

    def ensure(
        self,
        requests: Iterable[EmbeddingRequest],
        load_image: Callable[[str], Image.Image],
        embed: Callable[[list[Image.Image], list[str], list[str | None]], torch.Tensor],
        shard_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Compute what is missing, shard by shard. Returns (computed, reused)."""
        unique = list(dict.fromkeys(requests))
        index = self.index()
        todo = [r for r in unique if r.key(self.namespace) not in index]
        for start in range(0, len(todo), shard_size):
            chunk = todo[start : start + shard_size]
            loaded: dict[str, Image.Image] = {}  # one decode per image, not per aspect
            images = [loaded.setdefault(r.image_sha256, load_image(r.image_sha256)) if r.image_sha256 not in loaded
                      else loaded[r.image_sha256] for r in chunk]
            self.add(chunk, embed(images, [r.aspect for r in chunk], [r.prompt for r in chunk]))
            if progress:
                progress(min(start + shard_size, len(todo)), len(todo))
        return len(todo), len(unique) - len(todo)
