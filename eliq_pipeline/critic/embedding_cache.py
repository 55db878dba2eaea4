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
from functools import partial
from typing import Callable, Iterable, Sequence

import pyarrow as pa
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from eliq_pipeline.core.compute import Compute, InProcessCompute, ItemFailure, raise_failures
from eliq_pipeline.critic.embeddings import AspectEmbedder


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
        embed: Callable[[list[Image.Image], list[str], list[str | None]], torch.Tensor] | AspectEmbedder,
        shard_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
        compute: Compute | None = None,
    ) -> tuple[int, int]:
        """Compute what is missing, shard by shard. Returns (computed, reused).

        ``embed``: an :class:`AspectEmbedder` (loads its model once; runs on any ``compute``
        backend, default this process), or a function (images, aspects, prompts) -> embeddings
        run in this process. A shard is stored as soon as it is computed; its images are decoded
        when it is sent. An image that cannot be embedded fails alone: the rest is stored, then
        one error names it.
        """
        unique = list(dict.fromkeys(requests))
        index = self.index()
        todo = [r for r in unique if r.key(self.namespace) not in index]
        if isinstance(embed, AspectEmbedder):
            if compute is not None and compute.name != "in_process":
                embed = embed.portable()  # a worker elsewhere cannot read the adapter folder
            factory, work = embed.load, embed
        elif compute is not None:
            raise TypeError("a compute backend runs an AspectEmbedder, not a function")
        else:
            factory, work = _no_model, partial(_embed_with_function, embed)
        done = 0
        unreadable: list[ItemFailure] = []

        def shards():  # (request, image) items; a shard's images are decoded when it is sent
            for start in range(0, len(todo), shard_size):
                loaded: dict[str, Image.Image] = {}  # one decode (one image object) per image, not per aspect
                chunk = todo[start : start + shard_size]
                for r in chunk:
                    if r.image_sha256 not in loaded:
                        try:
                            loaded[r.image_sha256] = load_image(r.image_sha256)
                        except Exception as exc:  # an unreadable image fails alone
                            loaded[r.image_sha256] = None
                            unreadable.append(ItemFailure(start // shard_size, f"image {r.image_sha256}",
                                                          f"{type(exc).__name__}: {exc}"))
                items = [(r, loaded[r.image_sha256]) for r in chunk if loaded[r.image_sha256] is not None]
                if items:
                    yield items

        def store(_shard: int, items: list[tuple[EmbeddingRequest, Image.Image]], embeddings: list[torch.Tensor]) -> None:
            nonlocal done
            self.add([request for request, _ in items], torch.stack(embeddings))
            done += len(items)
            if progress:
                progress(done, len(todo))

        runner = compute or InProcessCompute()
        failures = runner.map_shards(factory, work, shards(), store,
                                     describe=lambda item: f"image {item[0].image_sha256} ({item[0].aspect})")
        raise_failures(unreadable + failures, "aspect embeddings")
        return len(todo), len(unique) - len(todo)


def _no_model() -> None:
    return None


def _embed_with_function(embed: Callable[[list[Image.Image], list[str], list[str | None]], torch.Tensor],
                         _model: None, items: list[tuple[EmbeddingRequest, Image.Image]]) -> list[torch.Tensor]:
    return list(embed([image for _, image in items], [r.aspect for r, _ in items], [r.prompt for r, _ in items]).unbind(0))
