"""Benchmark images as embedding requests: the same cache serves training tuples and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image

from eliq_pipeline.evaluation.benchmarks import Benchmark, benchmarks_from_config
from eliq_pipeline.critic.embedding_cache import EmbeddingRequest
from eliq_pipeline.core.images import load_image, sha256_file
from eliq_pipeline.supervision.image_cache import get_image

# Prompt-less images (UGC sets) still need an alignment-branch input for the QQT's visual score;
# they get this neutral caption and no alignment score is reported for them.
NEUTRAL_PROMPT = "a photograph"


def scoring_prompt(prompt: str | None) -> str:
    return prompt if prompt else NEUTRAL_PROMPT


def item_requests(sha: str, prompt: str | None) -> list[EmbeddingRequest]:
    return [EmbeddingRequest(sha, "tec", None), EmbeddingRequest(sha, "aes", None),
            EmbeddingRequest(sha, "ali", scoring_prompt(prompt))]


def load_present_benchmarks(datasets_dir: Path | None, explicit: dict | None = None,
                            verify: bool = True) -> tuple[list[Benchmark], list[tuple[str, str]]]:
    """Benchmarks under datasets_dir plus explicitly configured ones: (present, skipped)."""
    if datasets_dir is None and not explicit:
        return [], []
    return benchmarks_from_config(datasets_dir, explicit, verify=verify)


def benchmark_requests(datasets_dir: Path | None, explicit: dict | None = None
                       ) -> tuple[list[EmbeddingRequest], dict[str, Path], dict[str, int]]:
    """Requests for every image of every present benchmark, the sha -> file map, and counts."""
    requests: list[EmbeddingRequest] = []
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for benchmark in load_present_benchmarks(datasets_dir, explicit)[0]:
        counts[benchmark.name] = len(benchmark)
        for item in benchmark.items:
            sha = sha256_file(item.image_path)
            paths[sha] = item.image_path
            requests += item_requests(sha, item.prompt)
    return requests, paths, counts


def image_loader(store, benchmark_paths: dict[str, Path]) -> Callable[[str], Image.Image]:
    """Benchmark images are read from their dataset folder; everything else from the store."""

    def load(sha: str) -> Image.Image:
        return load_image(benchmark_paths[sha]) if sha in benchmark_paths else get_image(store, sha)

    return load
