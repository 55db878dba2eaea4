"""Materialize eras on a persistent Dagster instance, skipping eras that are already up to date.

`make demo` and `eliq materialize` use this; the runs land in the instance under
$ELIQ_HOME/dagster, so `make ui` shows them afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import dagster as dg

from eliq_pipeline.core.eras import check_runnable
from eliq_pipeline.core.storage import ArtifactStore
from eliq_pipeline.definitions import ELIQ_ASSETS, build_definitions, eliq_home, resources_from_env
from eliq_pipeline.defs.console import console_run_config, quiet_libraries
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.evaluation.benchmark_inputs import load_present_benchmarks
from eliq_pipeline.run_guard import home_lock, interrupted, process_tags, reap_dead_runs




ASSET_ORDER = [asset.key.to_user_string() for asset in ELIQ_ASSETS]


@dataclass
class EraRun:
    era: str
    status: str  # "materialized", "up to date", "failed", "in progress elsewhere"
    run_id: str | None = None
    detail: str = ""


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, era: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[era]), limit=1
    ).records
    return records[0] if records else None


class MaterializeInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped a run; no further era was started."""


# Tags Dagster puts on every materialization: its data version, and that of each input it read.
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/"


def _as_input(version: str | None) -> tuple[str, ...]:
    """How a downstream materialization records an upstream data version: as is, or (partitioned
    input) as the sha256 of the versions of the partitions it read (here the one era)."""
    return () if version is None else (version, hashlib.sha256(version.encode()).hexdigest())


@dataclass(frozen=True)
class Staleness:
    asset: str  # the first asset (in dependency order) that must be re-materialized
    reason: str


def missing_artifacts(store: ArtifactStore, metadata) -> list[str]:
    """The artifacts a materialization recorded (metadata `artifacts`: keys, a trailing '/' for a
    model folder) that are no longer in the store."""
    keys = getattr(metadata.get("artifacts"), "value", None) or []
    return [key for key in keys if not (store.dir_exists(key.rstrip("/")) if key.endswith("/") else store.exists(key))]


def find_stale(
    instance: dg.DagsterInstance, era: str, fingerprint: str, profile: str, benchmarks: list[str],
    store: ArtifactStore | None = None,
) -> Staleness | None:
    """The first asset of an era partition that needs work, or None when every asset is
    materialized from the current era definition, profile settings, benchmarks and code version,
    from the data versions its upstream assets have now (Dagster records the input data versions
    of each materialization), and (given the store) its recorded artifacts are still there.
    Everything downstream of that asset is re-materialized, nothing upstream."""
    found: list[Staleness] = []
    data_versions: dict[str, str | None] = {}  # asset -> data version of its latest materialization
    for asset in ELIQ_ASSETS:
        name = asset.key.to_user_string()
        record = _latest(instance, asset.key, era)
        if record is None:
            found.append(Staleness(name, f"{name} not materialized"))
            break
        materialization = record.asset_materialization
        metadata, tags = materialization.metadata, materialization.tags or {}
        code_version = tags.get("dagster/code_version")
        outdated = sorted(up for up, version in data_versions.items()
                          if tags.get(INPUT_DATA_VERSION_TAG + up) not in (None, *_as_input(version)))
        data_versions[name] = tags.get(DATA_VERSION_TAG)
        current = asset.code_versions_by_key.get(asset.key)
        if getattr(metadata.get("era_fingerprint"), "value", None) != fingerprint:
            found.append(Staleness(name, f"{name} was built from another definition of the era"))
        elif getattr(metadata.get("profile_fingerprint"), "value", None) != profile:
            found.append(Staleness(name, f"{name} was built with other profile settings"))
        elif code_version != current:
            found.append(Staleness(name, f"{name} code changed ({code_version} -> {current})"))
        elif outdated:
            found.append(Staleness(name, f"{name} was built from an earlier {outdated[0]}"))
        elif store is not None and (gone := missing_artifacts(store, metadata)):
            found.append(Staleness(name, f"{name}'s artifact {store.describe(gone[0])} is gone from the store"))
        scored = getattr(metadata.get("benchmarks"), "value", None)
        if scored is not None and sorted(scored) != sorted(benchmarks):
            # benchmark images enter at aspect_embeddings; supervision and tuning stay as they are
            found.append(Staleness("aspect_embeddings", f"benchmarks changed ({', '.join(scored) or 'none'} -> "
                                                        f"{', '.join(benchmarks) or 'none'})"))
    return min(found, key=lambda s: ASSET_ORDER.index(s.asset)) if found else None


def materialize_eras(
    era_names: Sequence[str] | None = None,
    force: bool = False,
    instance: dg.DagsterInstance | None = None,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    wait: bool = False,
    verbose: bool = False,
) -> list[EraRun]:
    """Materialize the stale part of each era, one run per era, under an exclusive lock on
    $ELIQ_HOME (another holder: refuse, or with `wait` queue behind it). Runs left STARTED by a
    killed process are failed and their pool slots released first. A SIGINT / SIGTERM ends the
    current run and raises `MaterializeInterrupted` without starting another era. The console
    shows one line per asset start / finish / check (defs/console.py); `verbose`: every event."""
    resources = resources_from_env(env)
    registry = resources["eras"].load()  # a malformed file (or an unset ${NAME}) fails here, before any work
    names = list(era_names) if era_names else registry.names()
    for name in names:
        registry.era(name)
    check_runnable(registry, resources["profile"].profile, names, resources["artifacts"].s3_endpoint_url or None)  # models and import sources, before any work
    instance = instance or dg.DagsterInstance.get()
    with home_lock(eliq_home(env), wait=wait, log=log):
        reap_dead_runs(instance, log)
        return _materialize_locked(registry, names, force, instance, resources, env, log, verbose)


def _materialize_locked(registry, names, force, instance, resources, env, log, verbose) -> list[EraRun]:
    known = set(instance.get_dynamic_partitions(ERA_PARTITIONS.name))
    missing = [name for name in registry.names() if name not in known]
    if missing:
        instance.add_dynamic_partitions(ERA_PARTITIONS.name, missing)
    job = build_definitions(env).resolve_job_def("eliq_job")
    profile = resources["profile"].fingerprint()  # profile settings + LLM refiner, as era_metadata records
    benchmarks = [b.name for b in load_present_benchmarks(resources["profile"].datasets_path,
                                                          resources["profile"].benchmark_config(), verify=False)[0]]
    store = resources["artifacts"].store()
    runs = []
    for name in names:
        elsewhere = run_in_flight(instance, name)
        if elsewhere is not None:  # e.g. the sensor's run, queued on the gpu pool: never build a partition twice
            launcher = elsewhere.tags.get("dagster/sensor_name") or "another launcher"
            log(f"era {name}: skipped, run {elsewhere.run_id[:8]} of {launcher} is {IN_FLIGHT_STATUS[elsewhere.status]} "
                "on it (follow it in the UI; run `eliq materialize` again afterwards for anything it left stale)")
            runs.append(EraRun(name, "in progress elsewhere", elsewhere.run_id))
            continue
        fingerprint = registry.era(name).fingerprint(registry.generators)
        stale = Staleness(ELIQ_ASSETS[0].key.to_user_string(), "forced") if force else find_stale(
            instance, name, fingerprint, profile, benchmarks, store)
        if stale is None:
            log(f"era {name}: up to date, skipped")
            runs.append(EraRun(name, "up to date"))
            continue
        selection = ASSET_ORDER[ASSET_ORDER.index(stale.asset):]
        log(f"era {name}: materializing {', '.join(selection)} ({stale.reason})")
        with quiet_libraries(verbose):
            result = job.execute_in_process(instance=instance, partition_key=name, raise_on_error=False,
                                            run_config=console_run_config(verbose), tags=process_tags(),
                                            asset_selection=[dg.AssetKey(key) for key in selection])
        if interrupted(result):
            instance.event_log_storage.free_concurrency_slots_for_run(result.run_id)
            raise MaterializeInterrupted(
                f"era {name}: stopped by a signal (run {result.run_id} marked failed); finished images, "
                f"checkpoints and embeddings are kept: run `eliq materialize` (or `make demo`) again to resume")
        status = "materialized" if result.success else "failed"
        detail = "" if result.success else _failure(result)
        log(f"era {name}: {status} (run {result.run_id}){' ' + detail if detail else ''}")
        runs.append(EraRun(name, status, result.run_id, detail))
    return runs


# run status -> how `eliq` names it, for runs that are not finished
IN_FLIGHT_STATUS = {dg.DagsterRunStatus.QUEUED: "queued", dg.DagsterRunStatus.NOT_STARTED: "starting",
              dg.DagsterRunStatus.STARTING: "starting", dg.DagsterRunStatus.STARTED: "running"}


def run_in_flight(instance: dg.DagsterInstance, era: str) -> dg.DagsterRun | None:
    """A queued or running run of the era's partition (the sensor's, the UI's, another machine's),
    or None. Dead runs of this machine were already failed by `reap_dead_runs`."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": era}, statuses=list(IN_FLIGHT_STATUS)),
                             limit=1)
    return runs[0] if runs else None


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
    return "see the run in the Dagster UI"
