"""Materialize eras on a persistent Dagster instance, skipping eras that are already up to date.

`make demo` and `eliq materialize` use this; the runs land in the instance under
$ELIQ_HOME/dagster, so `make ui` shows them afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import dagster as dg

from eliq_pipeline.assets import ELIQ_ASSETS
from eliq_pipeline.definitions import build_definitions, resources_from_env
from eliq_pipeline.eras import load_eras
from eliq_pipeline.partitions import ERA_PARTITIONS


@dataclass
class EraRun:
    era: str
    status: str  # "materialized", "up to date", "failed"
    run_id: str | None = None
    detail: str = ""


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, era: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[era]), limit=1
    ).records
    return records[0] if records else None


def stale_reason(instance: dg.DagsterInstance, era: str, fingerprint: str, profile: str) -> str | None:
    """Why an era partition needs work, or None when every asset is materialized from the current
    era definition, profile and code version, in dependency order."""
    previous_ts = 0.0
    for asset in ELIQ_ASSETS:
        record = _latest(instance, asset.key, era)
        if record is None:
            return f"{asset.key.to_user_string()} not materialized"
        materialization = record.asset_materialization
        metadata = materialization.metadata
        if getattr(metadata.get("era_fingerprint"), "value", None) != fingerprint:
            return f"{asset.key.to_user_string()} was built from another definition of the era"
        if getattr(metadata.get("profile"), "value", None) != profile:
            return f"{asset.key.to_user_string()} was built with another profile"
        code_version = (materialization.tags or {}).get("dagster/code_version")
        if code_version != asset.op.version and code_version != asset.code_versions_by_key.get(asset.key):
            return f"{asset.key.to_user_string()} code changed ({code_version} -> {asset.code_versions_by_key.get(asset.key)})"
        if record.timestamp < previous_ts:
            return f"{asset.key.to_user_string()} is older than its upstream"
        previous_ts = record.timestamp
    return None


def materialize_eras(
    era_names: Sequence[str] | None = None,
    force: bool = False,
    instance: dg.DagsterInstance | None = None,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> list[EraRun]:
    resources = resources_from_env(env)
    registry = load_eras(resources["eras"].path)  # a malformed file fails here, before any work
    names = list(era_names) if era_names else registry.names()
    for name in names:
        registry.era(name)
    instance = instance or dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(ERA_PARTITIONS.name))
    missing = [name for name in registry.names() if name not in known]
    if missing:
        instance.add_dynamic_partitions(ERA_PARTITIONS.name, missing)
    job = build_definitions(env).resolve_job_def("eliq_job")
    profile = resources["profile"].profile
    runs = []
    for name in names:
        fingerprint = registry.era(name).fingerprint(registry.generators)
        reason = None if force else stale_reason(instance, name, fingerprint, profile)
        if not force and reason is None:
            log(f"era {name}: up to date, skipped")
            runs.append(EraRun(name, "up to date"))
            continue
        log(f"era {name}: materializing ({'forced' if force else reason})")
        result = job.execute_in_process(instance=instance, partition_key=name, raise_on_error=False)
        status = "materialized" if result.success else "failed"
        detail = "" if result.success else _failure(result)
        log(f"era {name}: {status} (run {result.run_id}){' ' + detail if detail else ''}")
        runs.append(EraRun(name, status, result.run_id, detail))
    return runs


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
    return "see the run in the Dagster UI"
