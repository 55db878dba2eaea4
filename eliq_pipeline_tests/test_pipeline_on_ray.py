"""The tiny era built with ELIQ_RAY_ADDRESS (positives, low-quality / AI-specific renders, model
edits and embeddings on a real local Ray runtime) equals the in-process build: same images, same
embeddings, same tuples."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.critic.embedding_cache import EmbeddingCache
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import metadata_of, pipeline_env, write_eras


ERAS_WITH_EDITOR = """
generators:
  flux: {backend: diffusers, model: "tiny:flux"}
  sd15: {backend: diffusers, model: "tiny:sd"}
  edit: {backend: diffusers, model: "tiny:sd-img2img"}
eras:
  - {name: era-a, positive_generators: [flux], low_quality_generators: [sd15], editor: edit, seed: 1}
"""


def _build(root, eras_path, **extra):
    env = pipeline_env(root / "home", eras_path, **extra)
    (root / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        results = materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert [(r.era, r.status) for r in results] == [("era-a", "materialized")]
        meta = metadata_of(instance, "aspect_embeddings", "era-a")
    store = LocalArtifactStore(root / "home" / "artifacts")
    tables = {name: store.get_table(f"eras/era-a/{name}.parquet").to_pylist()
              for name in ("positive_images", "negative_images", "comparison_tuples", "aspect_embeddings")}
    return store, tables, meta


@pytest.fixture(scope="module")
def builds(tmp_path_factory, ray_runtime):
    root = tmp_path_factory.mktemp("ray-pipeline")
    eras_path = write_eras(root / "eras.yaml", ERAS_WITH_EDITOR)
    local = _build(root / "local", eras_path)
    remote = _build(root / "ray", eras_path, ELIQ_RAY_ADDRESS=ray_runtime, ELIQ_RAY_WORKERS="2")
    return local, remote


def test_images_and_tuples_equal_the_in_process_build(builds):
    (_, local, _), (_, remote, _) = builds
    for name in ("positive_images", "negative_images"):
        assert [r["image_sha256"] for r in remote[name]] == [r["image_sha256"] for r in local[name]], name
        assert len(local[name]) > 0
    assert any(r["method"] == "model_edit" for r in remote["negative_images"])  # the editor ran on Ray too
    assert remote["comparison_tuples"] == local["comparison_tuples"]


def test_embeddings_equal_the_in_process_build(builds):
    (local_store, local, local_meta), (remote_store, remote, remote_meta) = builds
    assert remote_meta["embeddings_computed"] == local_meta["embeddings_computed"] > 0

    def queries(rows):
        return [(r["image_sha256"], r["aspect"], r["has_prompt"]) for r in rows]

    assert queries(remote["aspect_embeddings"]) == queries(local["aspect_embeddings"])

    def embeddings(store, rows, namespace):  # each home has its own cache namespace (its model paths)
        cache = EmbeddingCache(store, namespace)
        index = cache.index()
        return torch.stack([cache._shard(index[r["key"]][0])[index[r["key"]][1]] for r in rows])

    torch.testing.assert_close(embeddings(remote_store, remote["aspect_embeddings"], remote_meta["adapter_hash"]),
                               embeddings(local_store, local["aspect_embeddings"], local_meta["adapter_hash"]),
                               rtol=0, atol=1e-5)
