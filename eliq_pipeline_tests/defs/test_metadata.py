"""The metadata the UI shows: numbers as floats (charted across runs and eras by Dagster), plots and
previews as inline PNGs that fit the metadata dialog, the benchmark results as a full table."""

from __future__ import annotations

import base64
import io
import json
import re

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.defs.metadata import accuracy_metadata, numbers, score_numbers, scores_table
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import FAST_OVERRIDES, pipeline_env, write_eras

ROWS = [
    {"benchmark": "heldout-tuples", "protocol": "label-free", "aspect": "visual", "metric": "ranking_accuracy_vis_vs_tec",
     "value": 0.9, "n": 8, "ci_low": None, "ci_high": None},
    {"benchmark": "set-a", "protocol": "label-free", "aspect": "visual", "metric": "srcc", "value": 0.41, "n": 30,
     "ci_low": 0.2, "ci_high": 0.6},
    {"benchmark": "set-a", "protocol": "label-free", "aspect": "visual", "metric": "plcc", "value": 0.38, "n": 30,
     "ci_low": None, "ci_high": None},
    {"benchmark": "set-a", "protocol": "label-free", "aspect": "alignment", "metric": "srcc", "value": -0.1, "n": 30,
     "ci_low": -0.3, "ci_high": 0.1},
    {"benchmark": "set-a", "protocol": "weak-supervised", "aspect": "visual", "metric": "srcc", "value": 0.5, "n": 24,
     "ci_low": None, "ci_high": None},
    {"benchmark": "set-a", "protocol": "weak-supervised", "aspect": "visual", "metric": "srcc_std", "value": 0.05,
     "n": 24, "ci_low": None, "ci_high": None},
    {"benchmark": "set-a", "protocol": "label-free/piqe", "aspect": "visual", "metric": "srcc", "value": 0.3, "n": 29,
     "ci_low": 0.1, "ci_high": 0.5},
    {"benchmark": "set-a", "protocol": "label-free/niqe", "aspect": "visual", "metric": "srcc", "value": float("nan"),
     "n": 29, "ci_low": None, "ci_high": None},
]


def test_scores_table_has_a_row_per_method_and_aspect_and_no_none_cells():
    table = scores_table(ROWS, profile="tiny")
    assert [c.name for c in table.schema.columns] == ["benchmark", "method", "aspect", "SRCC", "PLCC", "KRCC", "n"]
    records = [r.data for r in table.records]
    assert [(r["method"], r["aspect"]) for r in records] == [
        ("ELIQ, label-free", "visual"), ("ELIQ, label-free", "alignment"), ("ELIQ, weak-supervised", "visual"),
        ("NIQE fitted on this era's toy positives", "visual"), ("PIQE", "visual")]
    first = records[0]
    assert (first["SRCC"], first["PLCC"], first["KRCC"], first["n"]) == ("0.410 [0.200, 0.600]", "0.380", "–", 30)
    assert records[2]["SRCC"] == "0.500 ± 0.050"  # weak-supervised: mean ± sd over splits
    assert not any("None" in str(value) for r in records for value in r.values())


def test_numbers_for_charts_are_floats_and_skip_what_is_not_finite():
    found = score_numbers(ROWS)
    assert set(found) == {"srcc_vis_set-a", "plcc_vis_set-a", "srcc_ali_set-a", "srcc_vis_set-a_weak", "srcc_piqe_set-a"}
    assert all(isinstance(v, dg.FloatMetadataValue) for v in found.values())
    assert found["srcc_ali_set-a"].value == pytest.approx(-0.1)
    accuracy = accuracy_metadata({"vis_vs_tec": 0.9, "vis_vs_aes": 0.7, "ali": 0.4, "mean": 0.67})
    assert {k: v.value for k, v in accuracy.items()} == {
        "heldout_accuracy_tec": 0.9, "heldout_accuracy_aes": 0.7, "heldout_accuracy_ali": 0.4}
    assert numbers(final_loss=float("nan"), other=None, kept=1.5) == {"kept": dg.MetadataValue.float(1.5)}


# ---------------------------------------------------------------- one tiny era, materialized


def _toy_benchmark(folder) -> dict:
    """Twenty images of decreasing sharpness with quality and alignment MOS, as a generic-csv set."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    lines = ["image,prompt,mos,align"]
    for i in range(20):
        pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((96 // (1 + i // 4),) * 2).resize((96, 96))
        image.save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,a photo of thing {i},{5 - i / 5:.2f},{rng.uniform(1, 5):.2f}")
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return {"toy-set": {"root": str(folder), "loader": "generic-csv", "prompt_column": "prompt",
                        "align_column": "align", "limit": 20}}


@pytest.fixture(scope="module")
def era_metadata(tmp_path_factory):
    root = tmp_path_factory.mktemp("metadata")
    # graded technical negatives with both severity-ranking terms on, so their numbers show too
    # 12 prompts: three held-out positives, the fewest heldout_vis_ali_invariance is defined on
    graded = {**FAST_OVERRIDES, "n_prompts": 12, "technical_methods": ["gaussian_blur", "jpeg_recompress"], "severity_levels": [1, 2],
              "negatives_per_aspect": 2, "sft": {**FAST_OVERRIDES["sft"], "severity_ranking_weight": 1.0},
              "scorer": {**FAST_OVERRIDES["scorer"], "severity_ranking_weight": 1.0}}
    env = pipeline_env(root / "home", write_eras(root / "eras.yaml"), ELIQ_PROFILE_OVERRIDES=json.dumps(graded),
                       ELIQ_BENCHMARKS=json.dumps(_toy_benchmark(root / "toy-set")))
    with dg.instance_for_test() as instance:
        [run] = materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert run.status == "materialized", run.detail
        out = {}
        for key in ("positive_images", "negative_images", "tuned_mllm", "qqt_model", "benchmark_scores"):
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=["era-a"]), limit=1).records
            out[key] = dict(record.asset_materialization.metadata)
        yield out


def _images(entry: dg.MetadataValue) -> list[Image.Image]:
    assert isinstance(entry, dg.MarkdownMetadataValue)
    found = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", entry.value)
    assert found, entry.value[:200]
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]
    for image in images:
        image.load()
    return images


def test_training_numbers_are_floats(era_metadata):
    for key in ("tuned_mllm", "qqt_model"):
        meta = era_metadata[key]
        assert isinstance(meta["final_loss"], dg.FloatMetadataValue) and np.isfinite(meta["final_loss"].value)
    sft, qqt, bench = era_metadata["tuned_mllm"], era_metadata["qqt_model"], era_metadata["benchmark_scores"]
    for aspect in ("tec", "aes", "ali"):
        assert isinstance(sft[f"heldout_label_accuracy_{aspect}"], dg.FloatMetadataValue)
        for meta in (qqt, bench):
            entry = meta[f"heldout_accuracy_{aspect}"]
            assert isinstance(entry, dg.FloatMetadataValue) and 0 <= entry.value <= 1
    # graded technical negatives: how often mild is ranked above strong (the aes edits are ungraded)
    for meta in (sft, qqt):
        entry = meta["heldout_severity_order_tec"]
        assert isinstance(entry, dg.FloatMetadataValue) and 0 <= entry.value <= 1
        assert "heldout_severity_order_aes" not in meta
    # how much s_vis leans on the alignment token (label-free): a Spearman correlation
    invariance = qqt["heldout_vis_ali_invariance"]
    assert isinstance(invariance, dg.FloatMetadataValue) and -1 <= invariance.value <= 1
    # held-out positives over other prompts' visual negatives (label-free), per visual aspect
    for aspect in ("tec", "aes"):
        cross = qqt[f"heldout_cross_content_accuracy_{aspect}"]
        assert isinstance(cross, dg.FloatMetadataValue) and 0 <= cross.value <= 1
    # the JSON forms stay for tools that read them
    assert isinstance(qqt["heldout_accuracy"], dg.JsonMetadataValue) and "vis_vs_tec" in qqt["heldout_accuracy"].value
    assert qqt["heldout_accuracy_tec"].value == pytest.approx(qqt["heldout_accuracy"].value["vis_vs_tec"], abs=1e-4)


def test_plots_and_previews_are_pngs_that_fit_the_dialog(era_metadata):
    sft, qqt = era_metadata["tuned_mllm"], era_metadata["qqt_model"]
    bench = era_metadata["benchmark_scores"]
    plots = [(sft["loss_plot"], 360), (qqt["loss_plot"], 360), (qqt["heldout_accuracy_plot"], 360),
             (bench["heldout_accuracy_plot"], 360), (bench["scatter_vis_toy-set"], 480),
             (bench["scatter_ali_toy-set"], 480)]
    for entry, height in plots:
        [image] = _images(entry)
        assert image.format == "PNG" and image.size == (640, height)
    for key in ("positive_images", "negative_images"):
        [image] = _images(era_metadata[key]["preview"])
        assert image.width <= 640
    assert not era_metadata["benchmark_scores"]["scatter_vis_toy-set"].value.startswith("Prompt:")


def test_benchmark_scores_has_a_full_table_and_numbers_per_benchmark(era_metadata):
    bench = era_metadata["benchmark_scores"]
    # the toy set's 96 px images reach the tiny critic as 128 px: the baselines are read there too
    for name in ("srcc_vis_toy-set", "plcc_vis_toy-set", "krcc_vis_toy-set", "srcc_ali_toy-set", "srcc_piqe_toy-set",
                 "srcc_piqe-at-critic-input_toy-set", "srcc_niqe-at-critic-input_toy-set"):
        assert isinstance(bench[name], dg.FloatMetadataValue) and -1 <= bench[name].value <= 1, name
    table = bench["scores_table"]
    assert isinstance(table, dg.TableMetadataValue)
    methods = {(r.data["method"], r.data["aspect"]) for r in table.records}
    assert {("ELIQ, label-free", "visual"), ("ELIQ, label-free", "alignment"), ("PIQE", "visual"),
            ("PIQE, at the critic's input size", "visual")} <= methods
    assert not any(value is None or "None" in str(value) for r in table.records for value in r.data.values())
