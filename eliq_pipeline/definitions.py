"""The Dagster code location: the assets and checks of `defs/` (one folder per paper section), jobs,
sensor, schedule and env-driven resources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from eliq_pipeline.core.eras import eras_variables
from eliq_pipeline.defs.automation import era_registry_sensor, weekly_retrain_schedule
from eliq_pipeline.defs.console import LOGGER_NAME, eliq_console_logger
from eliq_pipeline.defs.critic.assets import aspect_embeddings, qqt_model, tuned_mllm
from eliq_pipeline.defs.critic.checks import qqt_beats_chance
from eliq_pipeline.defs.evaluation.assets import benchmark_scores
from eliq_pipeline.defs.evaluation.checks import srcc_not_below_previous_era
from eliq_pipeline.defs.jobs import eliq_job, retrain_job
from eliq_pipeline.defs.resources import (
    ArtifactStoreResource, ComputeResource, EraRegistryResource, ModelProfileResource, WarehouseResource,
)
from eliq_pipeline.defs.resources.io_manager import EraArtifactIOManager
from eliq_pipeline.defs.supervision.assets import comparison_tuples, negative_images, positive_images, prompts
from eliq_pipeline.defs.supervision.checks import (
    negatives_differ_from_positives, negatives_move_in_intended_direction, positive_images_decode,
    tuples_reference_valid_images,
)

# The eight ELIQ assets, all partitioned by era, and their checks.
ELIQ_ASSETS = [
    prompts, positive_images, negative_images, comparison_tuples,
    tuned_mllm, aspect_embeddings, qqt_model, benchmark_scores,
]
ELIQ_CHECKS = [srcc_not_below_previous_era, positive_images_decode, negatives_differ_from_positives,
               negatives_move_in_intended_direction, tuples_reference_valid_images, qqt_beats_chance]


def eliq_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("ELIQ_HOME", ".eliq")).resolve()


def llm_refiner_from_env(env: dict[str, str], process_env: bool = False) -> dict:
    """The LLM label refiner's settings (the profile resource's `llm_*` fields): ELIQ_LLM_BASE_URL,
    else OPENAI_BASE_URL (no base URL: refinement off), ELIQ_LLM_MODEL, ELIQ_LLM_API_KEY (or
    OPENAI_API_KEY, only with OPENAI_BASE_URL: a key is never sent to another host) and
    ELIQ_LLM_TIMEOUT (seconds).

    From the process environment (`process_env`) the key is passed as a `dg.EnvVar`, so the code
    location's resource snapshot (the UI's resource page, the launchpad) shows the variable's name,
    never the key; Dagster resolves it when the resource is initialised for a run."""
    base_url = env.get("ELIQ_LLM_BASE_URL") or env.get("OPENAI_BASE_URL") or ""
    key_var = "ELIQ_LLM_API_KEY"
    if not env.get(key_var) and not env.get("ELIQ_LLM_BASE_URL") and env.get("OPENAI_BASE_URL"):
        key_var = "OPENAI_API_KEY"
    api_key = env.get(key_var) or ""
    if api_key and process_env:
        api_key = dg.EnvVar(key_var)
    raw_timeout = env.get("ELIQ_LLM_TIMEOUT") or ""
    try:
        timeout = float(raw_timeout) if raw_timeout else 30.0
    except ValueError:
        raise ValueError(f"ELIQ_LLM_TIMEOUT must be a number of seconds, got {raw_timeout!r}") from None
    return {"llm_base_url": base_url, "llm_model": env.get("ELIQ_LLM_MODEL") or "", "llm_api_key": api_key,
            "llm_timeout": timeout}


def resources_from_env(env: dict[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources configured by ELIQ_* environment variables (see README): the one place the
    pipeline's settings are read from the environment; assets read resources only."""
    process_env = env is None
    env = dict(os.environ if env is None else env)
    home = eliq_home(env)
    artifacts = ArtifactStoreResource(
        backend=env.get("ELIQ_STORE", "local"),
        root=str(home / "artifacts"),
        bucket=env.get("ELIQ_S3_BUCKET", ""),
        prefix=env.get("ELIQ_S3_PREFIX", "eliq"),
        s3_endpoint_url=env.get("ELIQ_S3_ENDPOINT", ""),
        s3_region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    return {
        "artifacts": artifacts,
        # asset values (tables, model folders) on the artifact store, by era
        "io_manager": EraArtifactIOManager(artifacts=artifacts),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "profile": ModelProfileResource(
            profile=env.get("ELIQ_PROFILE", "tiny"), home=str(home),
            datasets_dir=env.get("ELIQ_DATASETS", ""), device=env.get("ELIQ_DEVICE", "auto"),
            backbone=env.get("ELIQ_BACKBONE", ""), overrides_json=env.get("ELIQ_PROFILE_OVERRIDES", ""),
            benchmarks_json=env.get("ELIQ_BENCHMARKS", ""), niqe_params=env.get("ELIQ_NIQE_PARAMS", ""),
            drift_threshold=float(env.get("ELIQ_DRIFT_THRESHOLD", "0.05")),
            prompts_file=env.get("ELIQ_PROMPTS_FILE", ""),
            **llm_refiner_from_env(env, process_env),
        ),
        "eras": EraRegistryResource(path=str(Path(env.get("ELIQ_ERAS", "eras.yaml")).resolve()),
                                    profile=env.get("ELIQ_PROFILE", "tiny"),
                                    s3_endpoint_url=env.get("ELIQ_S3_ENDPOINT", ""),
                                    variables_json=json.dumps(eras_variables(env), sort_keys=True)),
        # GPU batch work on a Ray cluster when ELIQ_RAY_ADDRESS is set; in-process otherwise
        "compute": ComputeResource(ray_address=env.get("ELIQ_RAY_ADDRESS", ""),
                                   ray_workers=_non_negative_int(env, "ELIQ_RAY_WORKERS")),
    }


def _non_negative_int(env: dict[str, str], name: str) -> int:
    raw = (env.get(name) or "0").strip()
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number >= 0, got {raw!r}")
    return int(raw)


def executor_from_env(env: dict[str, str]) -> dg.ExecutorDefinition | None:
    """ELIQ_EXECUTOR=k8s (deploy/): one Kubernetes pod per step (dagster-k8s's k8s_job_executor),
    so the GPU steps' `dagster-k8s/config` tags put them on GPU nodes. Unset: Dagster's default."""
    name = env.get("ELIQ_EXECUTOR", "")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name:
        raise ValueError(f"ELIQ_EXECUTOR must be 'k8s' or unset, got {name!r}")
    return None


def build_definitions(env: dict[str, str] | None = None) -> dg.Definitions:
    return dg.Definitions(
        executor=executor_from_env(dict(os.environ if env is None else env)),
        assets=ELIQ_ASSETS,
        asset_checks=ELIQ_CHECKS,
        jobs=[eliq_job, retrain_job],
        sensors=[era_registry_sensor],
        schedules=[weekly_retrain_schedule],
        resources=resources_from_env(env),
        # Dagster's console logger stays the default (`dagster dev`, the UI); `eliq materialize`
        # configures the compact one instead (defs/console.py).
        loggers={"console": dg.colored_console_logger, LOGGER_NAME: eliq_console_logger},
    )


defs = build_definitions()


def load_era_value(asset: str, era: str, env: dict[str, str] | None = None):
    """An era's value of `asset` through the IO manager, as `defs.load_asset_value` gives it (a
    pyarrow Table, or a local folder for a model). The value lives in the artifact store, not in
    the instance, so an ephemeral instance that knows the era stands in for the user's."""
    from eliq_pipeline.defs.partitions import ERA_PARTITIONS

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(ERA_PARTITIONS.name, [era])
        return build_definitions(env).load_asset_value(asset, partition_key=era, instance=instance)
