"""Small helpers shared by the asset modules (paths of an era's artifacts, table conversion)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import dagster as dg
import pyarrow as pa

from eliq_pipeline.core.eras import Era
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import EraRegistryResource, ModelProfileResource

GROUP_SUPERVISION = "supervision"
GROUP_CRITIC = "critic"
GROUP_EVALUATION = "evaluation"


def era_asset_check(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetChecksDefinition]:
    """`@dg.asset_check`, partitioned by era like the asset it checks, so the check reads that era's
    value. Dagster still calls partitioned checks a preview; we opt in here, once, without its
    warning on every import of the code location."""
    def decorator(fn: Callable[..., Any]) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=dg.PreviewWarning)
            return dg.asset_check(partitions_def=ERA_PARTITIONS, **kwargs)(fn)

    return decorator


def current_era(context: dg.AssetExecutionContext, eras: EraRegistryResource) -> Era:
    return eras.era(context.partition_key)


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def era_metadata(era: Era, eras: EraRegistryResource, profile: ModelProfileResource, **extra: Any) -> dict[str, Any]:
    """Every materialization records the era definition and profile it was built from, which
    `eliq materialize` compares to decide whether an era is up to date (the IO manager adds the
    store keys of the value, so an asset whose value is gone is rebuilt too)."""
    registry = eras.load()
    return {"era_fingerprint": era.fingerprint(registry.generators), "profile": profile.profile,
            "profile_fingerprint": profile.fingerprint(), **extra}


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
