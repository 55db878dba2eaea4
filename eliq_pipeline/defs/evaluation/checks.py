"""Asset checks on the benchmark results (paper 4): era-over-era drift."""


import dagster as dg

from eliq_pipeline.defs.evaluation.assets import benchmark_scores
from eliq_pipeline.defs.common import era_asset_check
from eliq_pipeline.defs.resources import EraRegistryResource, ModelProfileResource, WarehouseResource


def _partition(context: dg.AssetCheckExecutionContext) -> str:
    return context.op_execution_context.partition_key


@era_asset_check(asset=benchmark_scores, description=(
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
