"""An era of real exports: the prompt bank is the prompts of its import source (profile
`prompt_source: import`), the source lives under `${ELIQ_...}`, and every seed of a prompt becomes
its own positive (`on_duplicate: all`)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.defs.supervision.assets import positive_images, prompts
from eliq_pipeline.definitions import resources_from_env
from eliq_pipeline.supervision.prompts import prompt_id_for
from eliq_pipeline_tests.pipeline_helpers import FAST_OVERRIDES, pipeline_env, write_eras
from eliq_pipeline_tests.supervision.test_import_backend import _colour_image, _png, _write_manifest

TEXTS = ["style of Slim Aarons", "a pool party in Palm Springs, 1970, kodachrome"]

ERAS = """
generators:
  export: {backend: import, model: "${ELIQ_EXPORTS}/slim", params: {call_kwargs: {on_duplicate: all, min_side: 16}}}
  flux: {backend: diffusers, model: "tiny:flux"}
eras:
  - {name: era-a, positive_generators: [export], seed: 1}
  - {name: era-b, positive_generators: [flux], seed: 2}
"""


@pytest.fixture
def env(tmp_path):
    folder = tmp_path / "exports" / "slim"
    folder.mkdir(parents=True)
    rows = []
    for i, text in enumerate(TEXTS):
        for seed in range(2 + i):  # two seeds of the first prompt, three of the second
            (folder / f"{i}-{seed}.png").write_bytes(_png(_colour_image(10 * i + seed)))
            rows.append({"prompt": text, "file": f"{i}-{seed}.png", "category": "Fashion, People" if i == 0 else ""})
    _write_manifest(folder, rows)
    overrides = {**FAST_OVERRIDES, "prompt_source": "import"}
    return pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml", ERAS),
                        ELIQ_PROFILE_OVERRIDES=json.dumps(overrides), ELIQ_EXPORTS=str(tmp_path / "exports"))


def test_prompts_come_from_the_import_and_every_seed_is_a_positive(env, tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-a"])
        result = dg.materialize([prompts, positive_images], instance=instance, partition_key="era-a",
                                resources=resources_from_env(env))
    assert result.success
    store = LocalArtifactStore(tmp_path / "home" / "artifacts")
    bank = store.get_table("eras/era-a/prompts.parquet").to_pylist()
    assert [(r["text"], r["category"], list(r["labels"])) for r in bank] == [
        (TEXTS[0], "fashion", ["fashion"]), (TEXTS[1], "imported", ["imported"])]
    assert all(json.loads(r["variants"]) and r["degraded_prompt"] and r["appearance_prompt"] for r in bank)
    positives = store.get_table("eras/era-a/positive_images.parquet").to_pylist()
    assert [(p["prompt_id"], p["image_index"]) for p in positives] == [
        (prompt_id_for(TEXTS[0]), 0), (prompt_id_for(TEXTS[0]), 1),
        (prompt_id_for(TEXTS[1]), 0), (prompt_id_for(TEXTS[1]), 1), (prompt_id_for(TEXTS[1]), 2)]
    assert len({p["image_sha256"] for p in positives}) == 5


def test_an_era_without_an_import_positive_cannot_take_its_prompts_from_one(env):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-b"])
        with pytest.raises(ValueError, match="era 'era-b': prompt_source 'import' needs a positive generator"):
            dg.materialize([prompts], instance=instance, partition_key="era-b", resources=resources_from_env(env))
