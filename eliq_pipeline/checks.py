"""Asset checks on the supervision itself. Blocking where a wrong result would poison training."""


import json
from pathlib import Path
from typing import Iterable

import dagster as dg
import pyarrow as pa

from eliq_pipeline.assets import benchmark_scores, comparison_tuples, negative_images, positive_images, qqt_model
from eliq_pipeline.ml.supervision import get_image
from eliq_pipeline.partitions import ERA_PARTITIONS
from eliq_pipeline.resources import ArtifactStoreResource, EraRegistryResource, ModelProfileResource, WarehouseResource


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


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=positive_images, blocking=True, description="Every positive and low-quality image exists and decodes.")
def positive_images_decode(positive_images: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = positive_images.to_pylist()
    bad = _undecodable(store, (r["image_sha256"] for r in rows))
    return dg.AssetCheckResult(passed=not bad, metadata={"images": len(rows), "undecodable": len(bad),
                                                          "first_failures": dg.MetadataValue.json(bad[:5])})


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=negative_images, blocking=True, additional_ins={"prompts": dg.AssetIn("prompts")},
                description="Each negative differs from its positive: other pixels, or another prompt for alignment.")
def negatives_differ_from_positives(negative_images: pa.Table, prompts: pa.Table) -> dg.AssetCheckResult:
    rows = negative_images.to_pylist()
    texts = {r["prompt_id"]: r["text"] for r in prompts.to_pylist()}
    # an image negative must have other pixels; an alignment pair (image or I+, prompt) must
    # differ from (I+, p) in its image or its prompt
    same = [r["negative_id"] for r in rows
            if (r["aspect"] != "ali" and r["image_sha256"] in (None, r["positive_sha256"]))
            or (r["aspect"] == "ali" and (r["image_sha256"] or r["positive_sha256"]) == r["positive_sha256"]
                and (r["mismatched_prompt"] or "") == texts.get(r["prompt_id"]))]
    return dg.AssetCheckResult(passed=not same, metadata={"negatives": len(rows), "identical_to_positive": len(same),
                                                          "first_failures": dg.MetadataValue.json(same[:5])})


# method -> (measurable, +1 if the negative should raise it / -1 lower it)
INTENDED_DIRECTION = {
    "gaussian_noise": ("noise_level", +1),
    "jpeg_recompress": ("blockiness", +1),
    "degraded_prompt": ("sharpness", -1),
    "premature_decode": ("noise_level", +1),
}


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=negative_images, description=(
    "Each negative moves its measurable in the intended direction (noise raises the noise estimate, "
    "JPEG raises blockiness, ...); fails when a conventional method does so for under 90% of negatives."))
def negatives_move_in_intended_direction(negative_images: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    from eliq_pipeline.ml import degradations

    store = artifacts.store()
    rows = negative_images.to_pylist()
    measured: dict[str, list[bool]] = {}
    for row in rows:
        if row["method"] not in INTENDED_DIRECTION or not row["image_sha256"]:
            continue
        name, sign = INTENDED_DIRECTION[row["method"]]
        measure = getattr(degradations, name)
        delta = measure(get_image(store, row["image_sha256"])) - measure(get_image(store, row["positive_sha256"]))
        measured.setdefault(row["method"], []).append(sign * delta > 0)
    fractions = {m: round(sum(v) / len(v), 3) for m, v in sorted(measured.items())}
    conventional = {m: f for m, f in fractions.items() if m in ("gaussian_noise", "jpeg_recompress")}
    return dg.AssetCheckResult(
        passed=all(f >= 0.9 for f in conventional.values()), severity=dg.AssetCheckSeverity.WARN,
        metadata={"fraction_in_intended_direction": dg.MetadataValue.json(fractions),
                  "measurables": dg.MetadataValue.json({m: f"{'raise' if s > 0 else 'lower'} {n}" for m, (n, s) in INTENDED_DIRECTION.items()})})


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=comparison_tuples, blocking=True,
                description="Every tuple references images that exist and decode; splits are prompt-disjoint and non-empty.")
def tuples_reference_valid_images(comparison_tuples: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = comparison_tuples.to_pylist()
    bad = _undecodable(store, (r[c] for r in rows for c in ("positive_sha256", "tec_sha256", "aes_sha256", "ali_sha256")))
    train = {r["prompt_id"] for r in rows if r["split"] == "train"}
    heldout = {r["prompt_id"] for r in rows if r["split"] == "heldout"}
    overlap = sorted(train & heldout)
    passed = not bad and not overlap and bool(train) and bool(heldout)
    return dg.AssetCheckResult(passed=passed, metadata={
        "tuples": len(rows), "undecodable": len(bad), "first_failures": dg.MetadataValue.json(bad[:5]),
        "train_prompts": len(train), "heldout_prompts": len(heldout), "prompts_in_both_splits": len(overlap)})


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=qqt_model, description="The scorer ranks held-out positives above their negatives better than chance.")
def qqt_beats_chance(qqt_model: Path) -> dg.AssetCheckResult:
    report = json.loads((qqt_model / "training_report.json").read_text())
    accuracy = report["heldout_accuracy"]
    passed = bool(accuracy) and all(value > 0.5 for value in accuracy.values())
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"heldout_accuracy": dg.MetadataValue.json(accuracy)})


@dg.asset_check(partitions_def=ERA_PARTITIONS, asset=benchmark_scores, description=(
    "Era-over-era drift: flags (WARN) a benchmark whose label-free SRCC fell more than the configured "
    "threshold (ELIQ_DRIFT_THRESHOLD) below the previous era's."))
def srcc_not_below_previous_era(
    context: dg.AssetCheckExecutionContext, eras: EraRegistryResource, warehouse: WarehouseResource,
    profile: ModelProfileResource,
) -> dg.AssetCheckResult:
    era = _partition(context)
    previous = eras.load().previous_era(era)
    if previous is None:
        return dg.AssetCheckResult(passed=True, metadata={"previous_era": "none (first era)"})
    return drift_result(previous.name, warehouse.scores(era), warehouse.scores(previous.name), profile.drift_threshold)


def drift_result(previous: str, current_rows: list[dict], previous_rows: list[dict], threshold: float) -> dg.AssetCheckResult:
    current, before = srcc_by_benchmark(current_rows), srcc_by_benchmark(previous_rows)
    drops = {key: {"previous": before[key], "current": value, "drop": round(before[key] - value, 4)}
             for key, value in current.items() if key in before}
    flagged = sorted(key for key, d in drops.items() if d["drop"] > threshold)
    return dg.AssetCheckResult(
        passed=not flagged, severity=dg.AssetCheckSeverity.WARN,
        metadata={"previous_era": previous, "threshold": threshold,
                  "srcc": dg.MetadataValue.json(drops), "flagged": dg.MetadataValue.json(flagged)})


def srcc_by_benchmark(rows: list[dict]) -> dict[str, float]:
    """Label-free SRCC of our critic per 'benchmark/aspect' (held-out tuples have none)."""
    return {f"{r['benchmark']}/{r['aspect']}": float(r["value"]) for r in rows
            if r["protocol"] == "label-free" and r["metric"] == "srcc"}


ELIQ_CHECKS = [srcc_not_below_previous_era, positive_images_decode, negatives_differ_from_positives, negatives_move_in_intended_direction, tuples_reference_valid_images, qqt_beats_chance]
