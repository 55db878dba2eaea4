"""Asset checks on the supervision itself. Blocking where a wrong result would poison training."""


import json
from typing import Iterable

import dagster as dg

from eliq_pipeline.assets import comparison_tuples, negative_images, positive_images, qqt_model
from eliq_pipeline.assets.common import era_key
from eliq_pipeline.ml.supervision import get_image
from eliq_pipeline.resources import ArtifactStoreResource


def _partition(context: dg.AssetCheckExecutionContext) -> str:
    return context.op_execution_context.partition_key


def _undecodable(store, shas: Iterable[str]) -> list[str]:
    bad = []
    for sha in sorted(set(shas)):
        try:
            get_image(store, sha)
        except (FileNotFoundError, ValueError) as exc:
            bad.append(f"{sha[:12]}: {exc}")
    return bad


@dg.asset_check(asset=positive_images, blocking=True, description="Every positive and low-quality image exists and decodes.")
def positive_images_decode(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = store.get_table(era_key(_partition(context), "positive_images.parquet")).to_pylist()
    bad = _undecodable(store, (r["image_sha256"] for r in rows))
    return dg.AssetCheckResult(passed=not bad, metadata={"images": len(rows), "undecodable": len(bad),
                                                          "first_failures": dg.MetadataValue.json(bad[:5])})


@dg.asset_check(asset=negative_images, blocking=True,
                description="Each negative differs from its positive: other pixels, or another prompt for alignment.")
def negatives_differ_from_positives(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    era = _partition(context)
    rows = store.get_table(era_key(era, "negative_images.parquet")).to_pylist()
    prompts = {r["prompt_id"]: r["text"] for r in store.get_table(era_key(era, "prompts.parquet")).to_pylist()}
    same = [r["negative_id"] for r in rows
            if (r["image_sha256"] is not None and r["image_sha256"] == r["positive_sha256"])
            or (r["aspect"] == "ali" and (r["mismatched_prompt"] or "") == prompts.get(r["prompt_id"]))]
    return dg.AssetCheckResult(passed=not same, metadata={"negatives": len(rows), "identical_to_positive": len(same),
                                                          "first_failures": dg.MetadataValue.json(same[:5])})


@dg.asset_check(asset=comparison_tuples, blocking=True,
                description="Every tuple references images that exist and decode; splits are prompt-disjoint and non-empty.")
def tuples_reference_valid_images(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = store.get_table(era_key(_partition(context), "comparison_tuples.parquet")).to_pylist()
    bad = _undecodable(store, (r[c] for r in rows for c in ("positive_sha256", "tec_sha256", "aes_sha256")))
    train = {r["prompt_id"] for r in rows if r["split"] == "train"}
    heldout = {r["prompt_id"] for r in rows if r["split"] == "heldout"}
    overlap = sorted(train & heldout)
    passed = not bad and not overlap and bool(train) and bool(heldout)
    return dg.AssetCheckResult(passed=passed, metadata={
        "tuples": len(rows), "undecodable": len(bad), "first_failures": dg.MetadataValue.json(bad[:5]),
        "train_prompts": len(train), "heldout_prompts": len(heldout), "prompts_in_both_splits": len(overlap)})


@dg.asset_check(asset=qqt_model, description="The scorer ranks held-out positives above their negatives better than chance.")
def qqt_beats_chance(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    report = json.loads(store.get_bytes(era_key(_partition(context), "qqt_model/training_report.json")))
    accuracy = report["heldout_accuracy"]
    passed = bool(accuracy) and all(value > 0.5 for value in accuracy.values())
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"heldout_accuracy": dg.MetadataValue.json(accuracy)})


ELIQ_CHECKS = [positive_images_decode, negatives_differ_from_positives, tuples_reference_valid_images, qqt_beats_chance]
