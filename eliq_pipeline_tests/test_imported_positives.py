"""An era whose positives are all imported images (backend `import`) builds, trains and benchmarks.

Imported images have no sampler behind them, so the AI-specific negatives that re-render the
prompt with the positive's own generator are skipped and reported; every other family is built.
Real AI images: 24 renders of `supagruen-sd15` (MIT), one per prompt, halved to 128 px so the
toy editor runs in seconds; they stay twice the tiny profile's 64 px (low-quality negatives are
64 px), so positives and negatives of other sizes meet in one era as they do in production.
"""

from __future__ import annotations

import csv

import dagster as dg
import pytest
from PIL import Image

from eliq_pipeline.definitions import ELIQ_ASSETS
from eliq_pipeline.definitions import resources_from_env
from eliq_pipeline.supervision.generation import AI_SPECIFIC_METHODS
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline_tests.pipeline_helpers import metadata_of, pipeline_env, write_eras
from eliq_pipeline_tests.shared_data import datasets_dir

SUPAGRUEN = datasets_dir() / "supagruen-sd15"
N_IMAGES = 24
SIDE = 128
ERA = "era-imported"
NO_IMAGE = ["a lighthouse on a cliff in a storm, oil painting", "a bowl of lemons on a blue table, watercolour"]


def _import_folder(target):
    """One tile-0 render per prompt, copied (at SIDE px) with a manifest keyed by prompt text; returns the prompts."""
    with (SUPAGRUEN / "manifest.csv").open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["tile"] == "0"][:N_IMAGES]
    (target / "images").mkdir(parents=True)
    with (target / "manifest.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "prompt"])
        for row in rows:
            name = "images/" + row["file"].rsplit("/", 1)[-1]
            with Image.open(SUPAGRUEN / row["file"]) as image:
                image.convert("RGB").resize((SIDE, SIDE), Image.LANCZOS).save(target / name, quality=92)
            writer.writerow([name, row["prompt"]])
    return [row["prompt"] for row in rows]


@pytest.fixture(scope="module")
def imported_era(tmp_path_factory):
    if not (SUPAGRUEN / "manifest.csv").is_file():
        pytest.skip(f"{SUPAGRUEN} is absent")
    root = tmp_path_factory.mktemp("imported")
    prompts = _import_folder(root / "api-model")
    prompts_file = root / "prompts.csv"
    with prompts_file.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([p] for p in prompts + NO_IMAGE)  # two prompts have no imported image
    eras_path = write_eras(root / "eras.yaml", f"""
generators:
  api-model: {{backend: import, model: "{root / 'api-model'}"}}
  sd15: {{backend: diffusers, model: "tiny:sd"}}
  edit: {{backend: diffusers, model: "tiny:sd-img2img"}}
eras:
  - {{name: {ERA}, positive_generators: [api-model], low_quality_generators: [sd15], editor: edit, seed: 1}}
""")
    # no external benchmark (scoring AGIQA-3K would triple the run time; test_incremental_refresh
    # covers it): benchmark_scores reports the held-out tuple ranking of the trained critic
    (root / "datasets").mkdir()
    (root / "dagster").mkdir()
    env = pipeline_env(root / "home", eras_path, ELIQ_PROMPTS_FILE=str(prompts_file),
                       ELIQ_DATASETS=str(root / "datasets"))
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        runs = materialize_eras(instance=instance, env=env, log=lambda _: None)
        yield instance, runs, LocalArtifactStore(root / "home" / "artifacts"), prompts, env


def test_every_asset_of_the_import_only_era_materializes_and_every_check_passes(imported_era):
    instance, runs, *_ = imported_era
    assert [(r.era, r.status) for r in runs] == [(ERA, "materialized")], runs
    for asset in ELIQ_ASSETS:
        metadata_of(instance, asset.key.to_user_string(), ERA)  # raises when not materialized
    evaluations = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    results = {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed
               for e in evaluations}
    for check in ("positive_images_decode", "negatives_differ_from_positives", "tuples_reference_valid_images"):
        assert results.get(check) is True, results


def test_positives_are_the_prompts_with_an_imported_image(imported_era):
    instance, _, store, prompts, _ = imported_era
    meta = metadata_of(instance, "positive_images", ERA)
    assert (meta["num_positives"], meta["images_skipped"], meta["images_generated"]) == (N_IMAGES, len(NO_IMAGE), N_IMAGES)
    positives = store.get_table(f"eras/{ERA}/positive_images.parquet").to_pylist()
    assert sorted(p["prompt"] for p in positives) == sorted(prompts)
    assert metadata_of(instance, "prompts", ERA)["num_prompts"] == N_IMAGES + len(NO_IMAGE)


def test_sampler_negatives_are_skipped_with_count_and_reason_the_rest_is_built(imported_era):
    instance, _, store, _, _ = imported_era
    meta = metadata_of(instance, "negative_images", ERA)
    skipped = meta["skipped_negatives"]
    assert set(skipped) == {f"ai_specific/{m}" for m in AI_SPECIFIC_METHODS}
    for skip in skipped.values():
        assert skip["count"] == N_IMAGES
        assert skip["reason"] == "generator 'api-model' (import backend) has no sampler"
    counts = meta["counts_by_family_aspect_method"]
    for key in ("conventional/tec/jpeg_recompress", "conventional/tec/gaussian_noise", "conventional/aes/offline_edit",
                "conventional/aes/model_edit", "ai_specific/aes/low_quality_generator", "conventional/ali/shuffled_prompt"):
        assert counts.get(key) == N_IMAGES, (key, counts)
    negatives = store.get_table(f"eras/{ERA}/negative_images.parquet").to_pylist()
    assert not {n["method"] for n in negatives} & set(AI_SPECIFIC_METHODS)


def test_tuples_exist_in_both_splits_and_the_critic_is_benchmarked(imported_era):
    _, _, store, _, env = imported_era
    tuples = store.get_table(f"eras/{ERA}/comparison_tuples.parquet").to_pylist()
    assert {t["split"] for t in tuples} == {"train", "heldout"}
    assert len(tuples) == N_IMAGES * 2  # tuples_per_positive of the tiny profile
    assert {t["tec_family"] for t in tuples} == {"conventional"}
    assert {t["aes_method"] for t in tuples} <= {"offline_edit", "model_edit", "low_quality_generator"}
    rows = resources_from_env(env)["warehouse"].scores(ERA)
    assert {r["metric"] for r in rows if r["benchmark"] == "heldout-tuples"}  # the trained critic's held-out ranking
