"""GPU batch work on a real local Ray runtime gives what in-process gives: the same image sha256s
for positives, low-quality and AI-specific renders (tiny diffusers pipelines), the same aspect
embeddings (tiny tuned Qwen3-VL); only missing items are sent; a bad image fails alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from eliq_pipeline import tiny
from eliq_pipeline.core.compute import RayCompute
from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.critic.embedding_cache import EmbeddingCache, EmbeddingRequest
from eliq_pipeline.critic.embeddings import AspectEmbedder
from eliq_pipeline.supervision.backends import GeneratorFactory
from eliq_pipeline.supervision.generation import (
    GenerationRequest, ai_specific_requests, generate_ai_specific, generate_images, generation_params,
)
from eliq_pipeline.supervision.generators import GeneratorSpec
from eliq_pipeline.supervision.image_cache import get_image, put_image
from eliq_pipeline.supervision.prompts import build_prompt_bank
from eliq_pipeline_tests.critic.test_bundle import images, make_adapter
from eliq_pipeline.tiny.backbone import build_tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # the actors use the driver's thread count too

DEFAULTS = {"steps": 2, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def generators(tmp_path_factory) -> GeneratorFactory:
    models = tmp_path_factory.mktemp("models")
    specs = {gid: GeneratorSpec(id=gid, backend="diffusers", model=tiny.resolve(ref, models), params=dict(DEFAULTS))
             for gid, ref in (("flux", "tiny:flux"), ("sd15", "tiny:sd"))}
    return GeneratorFactory(specs, device="cpu")


def _requests(gid: str, n: int = 3) -> list[GenerationRequest]:
    return [GenerationRequest(gid, p, generation_params({}, DEFAULTS, p)) for p in build_prompt_bank(n, seed=3)]


def _ray(address: str, workers: int = 2) -> RayCompute:
    return RayCompute(address=address, workers=workers, gpu_resource="fake_gpu")


def test_generation_on_ray_gives_the_same_images_and_sends_only_what_is_missing(ray_runtime, generators, tmp_path):
    local, remote = LocalArtifactStore(tmp_path / "local"), LocalArtifactStore(tmp_path / "ray")
    requests = _requests("flux") + _requests("sd15")
    expected, generated, _ = generate_images(local, requests, generators, batch_size=2)
    assert generated == 6
    # the remote store already holds the first flux image: only the other five are sent
    generate_images(remote, requests[:1], generators, batch_size=2)
    driver_side = replace(generators, loaded={})
    rows, generated, reused = generate_images(remote, requests, driver_side, batch_size=2, compute=_ray(ray_runtime))
    assert (generated, reused) == (5, 1)
    assert [r["image_sha256"] for r in rows] == [r["image_sha256"] for r in expected]
    assert not driver_side.loaded  # the driver planned every cache key without loading a sampler

    planned = ai_specific_requests(_requests("flux", 2))
    ai_local, _, _ = generate_ai_specific(local, planned, generators, batch_size=2)
    ai_remote, generated, _ = generate_ai_specific(remote, planned, generators, batch_size=2, compute=_ray(ray_runtime))
    assert generated == len(planned) == 8  # incl. premature decoding (stop_step) shards
    assert [(r["method"], r["image_sha256"]) for r in ai_remote] == [(r["method"], r["image_sha256"]) for r in ai_local]


def test_ray_needs_a_loader_its_workers_can_rebuild(ray_runtime, generators, tmp_path):
    with pytest.raises(TypeError, match="pass a GeneratorFactory"):
        generate_images(LocalArtifactStore(tmp_path), _requests("flux", 1), lambda gid: generators(gid),
                        compute=_ray(ray_runtime))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backbone")
    return make_adapter(build_tiny_backbone(root / "base", seed=0), root / "adapter")


def test_embeddings_on_ray_equal_in_process_and_a_bad_image_fails_alone(ray_runtime, adapter, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    shas = [put_image(store, image) for image in images([(64, 64), (96, 160), (128, 80), (72, 72)], seed=5)]
    requests = [EmbeddingRequest(sha, aspect, "a lighthouse at dusk" if aspect == "ali" else None)
                for sha in shas for aspect in ("tec", "aes", "ali")]
    embedder = AspectEmbedder(str(adapter), device="cpu", batch_size=4)
    local = EmbeddingCache(store, "local")
    assert local.ensure(requests, lambda sha: get_image(store, sha), embedder, shard_size=5) == (12, 0)

    remote = EmbeddingCache(store, "ray")
    remote.ensure(requests[:4], lambda sha: get_image(store, sha), embedder, shard_size=5)  # already there
    computed, reused = remote.ensure(requests, lambda sha: get_image(store, sha), embedder, shard_size=5,
                                     compute=_ray(ray_runtime))
    assert (computed, reused) == (8, 4)
    torch.testing.assert_close(EmbeddingCache(store, "ray").get(requests), EmbeddingCache(store, "local").get(requests),
                               rtol=0, atol=1e-5)

    # an image that cannot be read: its queries are named, every other query is computed and kept
    bad = EmbeddingRequest("0" * 64, "tec", None)
    again = EmbeddingCache(store, "ray-bad")
    with pytest.raises(RuntimeError, match=r"aspect embeddings: 1 item\(s\) failed.*image 0{64}"):
        again.ensure([bad, *requests], lambda sha: get_image(store, sha), embedder, shard_size=5,
                     compute=_ray(ray_runtime, workers=1))
    torch.testing.assert_close(EmbeddingCache(store, "ray-bad").get(requests), local.get(requests), rtol=0, atol=1e-5)
