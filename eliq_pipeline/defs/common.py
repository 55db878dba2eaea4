"""Small helpers shared by the asset modules (paths of an era's artifacts, table conversion)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import dagster as dg
import pyarrow as pa

from eliq_pipeline.core.eras import Era
from eliq_pipeline.critic.backbone import directory_fingerprint
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import EraRegistryResource, ModelProfileResource

# Op tags of the `gpu`-pool assets: on Kubernetes (deploy/, the k8s_job_executor) each such step
# gets a pod with one GPU. Requesting `nvidia.com/gpu` alone already schedules the pod on a GPU node
# (only those advertise the resource), so no provider-specific node label is needed; the toleration
# lets it onto nodes carrying the usual `nvidia.com/gpu` taint. Local executors ignore these tags.
GPU_STEP_TAGS: dict[str, Any] = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
        },
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}


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


def content_digest(value: pa.Table | Path | str) -> str:
    """sha256 of an asset value: a table's Arrow IPC bytes, a model folder's
    `directory_fingerprint` (file names and bytes), or a string standing for the value."""
    digest = hashlib.sha256()
    if isinstance(value, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        digest.update(sink.getvalue().to_pybytes())
    elif isinstance(value, Path):
        digest.update(directory_fingerprint(value).encode())
    else:
        digest.update(str(value).encode())
    return digest.hexdigest()


def era_data_version(metadata: dict[str, Any], value: pa.Table | Path | str) -> dg.DataVersion:
    """The data version of a materialization: its content, the era definition and the profile it
    was built under. Downstream materializations record it (`dagster/input_data_version/...`), so
    a value rebuilt with other content makes what was built from it stale, in the UI and for
    `eliq materialize`."""
    payload = json.dumps([metadata["era_fingerprint"], metadata["profile_fingerprint"], content_digest(value)])
    return dg.DataVersion(hashlib.sha256(payload.encode()).hexdigest()[:32])


def era_output(value: pa.Table | Path, metadata: dict[str, Any]) -> dg.Output:
    """An asset's value with its metadata (from `era_metadata`) and its data version (a beta
    parameter of Dagster's; its warning is silenced here, where we opt in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)
        return dg.Output(value, metadata=metadata, data_version=era_data_version(metadata, value))


def era_result(metadata: dict[str, Any], content: str) -> dg.MaterializeResult:
    """`era_output` for an asset whose value lives outside the IO manager (the warehouse rows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)
        return dg.MaterializeResult(metadata=metadata, data_version=era_data_version(metadata, content))
