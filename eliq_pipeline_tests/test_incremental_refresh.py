"""Adding an era materializes only that era, reusing shared images and cached embeddings."""

from __future__ import annotations

import contextlib
import io
import re

import dagster as dg
import pytest

from eliq_pipeline.definitions import ELIQ_ASSETS, ELIQ_CHECKS
from eliq_pipeline.core.eras import append_era
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import agiqa_subset, materialization_ids, metadata_of, pipeline_env, write_eras

ASSET_KEYS = [a.key.to_user_string() for a in ELIQ_ASSETS]


@pytest.fixture(scope="module")
def two_eras(tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    eras_path = write_eras(root / "eras.yaml")
    datasets = agiqa_subset(root / "datasets")
    env = pipeline_env(root / "home", eras_path, ELIQ_DATASETS=str(datasets or ""))
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        console = io.StringIO()  # what `eliq materialize` prints while the era's steps run
        with contextlib.redirect_stdout(console):
            first = materialize_eras(instance=instance, env=env, log=lambda _: None)
        CONSOLE["era-a"] = console.getvalue()
        era_a_before = {key: materialization_ids(instance, key, "era-a") for key in ASSET_KEYS}
        append_era(eras_path, "era-b", like="era-a", positive_generators=["flux", "sd3"])
        second = materialize_eras(instance=instance, env=env, log=lambda _: None)
        era_a_after = {key: materialization_ids(instance, key, "era-a") for key in ASSET_KEYS}
        yield instance, env, first, second, era_a_before, era_a_after


CONSOLE: dict[str, str] = {}


def test_console_shows_each_asset_start_finish_and_check_not_each_item(two_eras):
    lines = CONSOLE["era-a"].splitlines()
    assert [line.strip() for line in lines if line.strip().startswith("▸")] == [f"▸ {key}" for key in ASSET_KEYS]
    finished = [re.fullmatch(r"  ✓ (\w+) \((\d+\.\d s|\d+ min \d\d s)\)", line) for line in lines if "✓" in line]
    assert all(finished) and [m.group(1) for m in finished] == ASSET_KEYS
    checks = [line.strip() for line in lines if line.strip().startswith("check ")]
    assert "check positive_images:positive_images_decode passed" in checks
    assert len(checks) == len(ELIQ_CHECKS) and all(c.endswith(" passed") or "FAILED" in c for c in checks)
    # nothing per item, no Dagster framework events, no library progress bars
    assert not any(re.search(r"\d+/\d+ images|STEP_|Loading pipeline components|Writing model shards", line)
                   for line in lines), lines
    assert len(lines) <= 2 * len(ASSET_KEYS) + len(ELIQ_CHECKS) + 4, lines


def test_first_build_materializes_every_asset_of_the_era(two_eras):
    instance, _, first, _, era_a_before, _ = two_eras
    assert [(r.era, r.status) for r in first] == [("era-a", "materialized")]
    assert all(len(ids) == 1 for ids in era_a_before.values()), era_a_before
    assert metadata_of(instance, "positive_images", "era-a")["images_generated"] == 6  # 6 prompts x flux
    # 6 low-quality sd15 images + 4 AI-specific renders (degraded prompt, premature decode,
    # appearance prompt, prompt variant) per positive
    assert metadata_of(instance, "negative_images", "era-a")["images_generated"] == 6 + 4 * 6


def test_adding_an_era_materializes_only_the_new_era(two_eras):
    _, _, _, second, era_a_before, era_a_after = two_eras
    assert [(r.era, r.status) for r in second] == [("era-a", "up to date"), ("era-b", "materialized")]
    assert era_a_after == era_a_before  # not one new materialization of the old era


def test_shared_generator_images_are_reused_not_regenerated(two_eras):
    instance = two_eras[0]
    meta = metadata_of(instance, "positive_images", "era-b")
    # flux (6) is shared with era-a; only sd3 (6) is new.
    assert (meta["images_generated"], meta["images_reused"]) == (6, 6)
    negatives = metadata_of(instance, "negative_images", "era-b")
    # reused: sd15 low-quality (6) and flux's AI-specific renders (24); new: sd3's renders (24)
    assert (negatives["images_generated"], negatives["images_reused"]) == (24, 30)


def test_rerunning_embeddings_reuses_every_cached_embedding(two_eras):
    instance, env = two_eras[0], two_eras[1]
    from eliq_pipeline.definitions import build_definitions

    first = metadata_of(instance, "aspect_embeddings", "era-a")
    assert first["embeddings_computed"] > 0
    job = build_definitions(env).resolve_job_def("eliq_job")
    result = job.execute_in_process(
        instance=instance, partition_key="era-a", raise_on_error=True,
        asset_selection=[dg.AssetKey("aspect_embeddings")],
    )
    assert result.success
    again = metadata_of(instance, "aspect_embeddings", "era-a")
    assert again["embeddings_computed"] == 0
    assert again["embeddings_reused"] == first["embeddings_computed"] + first["embeddings_reused"]


def test_benchmark_scores_report_heldout_ranking_and_correlations_for_present_benchmarks(two_eras):
    instance, env = two_eras[0], two_eras[1]
    from eliq_pipeline.definitions import resources_from_env

    rows = resources_from_env(env)["warehouse"].scores("era-b")
    heldout = {r["metric"] for r in rows if r["benchmark"] == "heldout-tuples"}
    assert {"ranking_accuracy_vis_vs_tec", "ranking_accuracy_vis_vs_aes", "ranking_accuracy_ali"} <= heldout
    if not env["ELIQ_DATASETS"]:
        pytest.skip("AGIQA-3K is not available next to the repository")
    agiqa = {(r["protocol"], r["aspect"], r["metric"]): r for r in rows if r["benchmark"] == "agiqa-3k"}
    for aspect in ("visual", "alignment"):
        for metric in ("srcc", "plcc", "plcc_logistic", "krcc"):
            row = agiqa[("label-free", aspect, metric)]
            assert row["n"] == 30 and -1.0 <= row["value"] <= 1.0
            weak = agiqa[("weak-supervised", aspect, metric)]
            assert weak["n"] == 24 and agiqa[("weak-supervised", aspect, f"{metric}_std")]["value"] >= 0  # 20% fit
    for baseline in ("label-free/niqe", "label-free/piqe"):
        assert agiqa[(baseline, "visual", "srcc")]["n"] >= 27  # NIQE is undefined on all-black images
    agiqa = {(a, m): r for (p, a, m), r in agiqa.items() if p == "label-free"}
    assert agiqa[("visual", "srcc")]["ci_low"] <= agiqa[("visual", "srcc")]["value"] <= agiqa[("visual", "srcc")]["ci_high"]
    assert "agiqa-3k" in metadata_of(instance, "benchmark_scores", "era-b")["scores"]


def test_supervision_command_shows_counts_per_family_aspect_method(two_eras, monkeypatch, capsys):
    import json

    from eliq_pipeline.cli import main

    monkeypatch.setenv("ELIQ_HOME", two_eras[1]["ELIQ_HOME"])
    assert main(["supervision", "--era", "era-a", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 6 positives: 2 conventional tec, 1 edit, 1 shuffled prompt, 4 AI-specific renders, 1 low-quality each
    assert report["negatives"] == {
        "ai_specific/aes/appearance_prompt": 6, "ai_specific/aes/low_quality_generator": 6,
        "ai_specific/ali/variant_prompt": 6, "ai_specific/tec/degraded_prompt": 6,
        "ai_specific/tec/premature_decode": 6, "conventional/aes/offline_edit": 6,
        "conventional/ali/shuffled_prompt": 6, "conventional/tec/gaussian_noise": 6,
        "conventional/tec/jpeg_recompress": 6}
    assert sum(report["tuples"].values()) == 12
    assert main(["supervision", "--era", "era-a"]) == 0
    assert "offline_edit" in capsys.readouterr().out


def test_report_shows_each_era_as_compact_tables_and_writes_csv(two_eras, monkeypatch, capsys, tmp_path):
    import csv

    from eliq_pipeline.cli import main
    from eliq_pipeline.definitions import resources_from_env
    from eliq_pipeline.evaluation.report import TOY_CAVEAT

    env = two_eras[1]
    monkeypatch.setenv("ELIQ_HOME", env["ELIQ_HOME"])
    assert main(["report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"> {TOY_CAVEAT}"  # the tiny profile's numbers say nothing about real images
    assert [line for line in lines if line.startswith("## ")] == ["## era-a", "## era-b"]
    assert sum(line.startswith("Held-out tuples: ") for line in lines) == 2
    if env["ELIQ_DATASETS"]:
        assert lines.count("| method | aspect | SRCC | PLCC | KRCC | n |") == 2  # one AGIQA-3K table per era
        assert any(line.startswith("| **ELIQ, label-free** | visual | ") for line in lines)
        assert any(line.startswith("| NIQE fitted on this era's toy positives | visual | ") for line in lines)
        # images NIQE cannot score are counted and named, in the report and the warehouse
        dropped = resources_from_env(env)["warehouse"].dropped_images("era-a")
        niqe_n = {r["n"] for r in resources_from_env(env)["warehouse"].scores("era-a")
                  if r["protocol"] == "label-free/niqe"}
        assert niqe_n == {30 - len(dropped.get(("era-a", "agiqa-3k", "label-free/niqe"), []))}
        for images in dropped.values():
            assert any(f"undefined on {len(images)} of 30 images (left out): {images[0]}" in line for line in lines)
    assert main(["report", "--format", "csv", "--out", str(tmp_path / "scores.csv")]) == 0
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["era", "benchmark", "protocol", "aspect", "metric", "value", "ci_low", "ci_high", "n", "bundle_hash"]
    assert {r["era"] for r in rows} == {"era-a", "era-b"}


def test_a_changed_benchmark_set_rebuilds_only_embeddings_and_downstream(two_eras):
    """Runs last: it changes the module's state. Supervision and tuning are left alone."""
    instance, env = two_eras[0], dict(two_eras[1])
    if not env["ELIQ_DATASETS"]:
        pytest.skip("AGIQA-3K is not available next to the repository")
    before = {key: materialization_ids(instance, key, "era-a") for key in ASSET_KEYS}
    env["ELIQ_DATASETS"] = ""  # the benchmark folder went away
    runs = materialize_eras(instance=instance, env=env, log=lambda _: None)
    assert [(r.era, r.status) for r in runs] == [("era-a", "materialized"), ("era-b", "materialized")]
    after = {key: materialization_ids(instance, key, "era-a") for key in ASSET_KEYS}
    for key in ("prompts", "positive_images", "negative_images", "comparison_tuples", "tuned_mllm"):
        assert after[key] == before[key], key
    for key in ("aspect_embeddings", "qqt_model", "benchmark_scores"):
        assert len(after[key]) == len(before[key]) + 1, key
    assert metadata_of(instance, "aspect_embeddings", "era-a")["embeddings_computed"] == 0
    assert [r.status for r in materialize_eras(instance=instance, env=env, log=lambda _: None)] == ["up to date"] * 2


def test_drift_check_flags_an_srcc_drop_against_the_previous_era():
    import dagster as dg

    from eliq_pipeline.defs.evaluation.checks import drift_result

    row = {"benchmark": "agiqa-3k", "protocol": "label-free", "aspect": "visual", "metric": "srcc", "n": 30}
    weak = {**row, "protocol": "weak-supervised", "value": 0.1}
    previous, current = [{**row, "value": 0.60}, weak], [{**row, "value": 0.50}, weak]
    flagged = drift_result("era-a", current, previous, threshold=0.05)
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.metadata["srcc"].value == {"agiqa-3k/visual": {"previous": 0.6, "current": 0.5, "drop": 0.1}}
    assert flagged.metadata["flagged"].value == ["agiqa-3k/visual"]
    assert drift_result("era-a", current, previous, threshold=0.2).passed
