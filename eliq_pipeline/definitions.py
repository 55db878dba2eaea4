"""The Dagster code location: assets, checks, jobs, sensor, schedule and env-driven resources."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from eliq_pipeline.assets import ELIQ_ASSETS
from eliq_pipeline.checks import ELIQ_CHECKS
from eliq_pipeline.jobs import eliq_job, retrain_job
from eliq_pipeline.resources import ArtifactStoreResource, EraRegistryResource, ModelProfileResource, WarehouseResource
from eliq_pipeline.sensors import era_registry_sensor, weekly_retrain_schedule


def eliq_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("ELIQ_HOME", ".eliq")).resolve()


def resources_from_env(env: dict[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources configured by ELIQ_* environment variables (see README)."""
    env = dict(os.environ if env is None else env)
    home = eliq_home(env)
    return {
        "artifacts": ArtifactStoreResource(
            backend=env.get("ELIQ_STORE", "local"),
            root=str(home / "artifacts"),
            bucket=env.get("ELIQ_S3_BUCKET", ""),
            prefix=env.get("ELIQ_S3_PREFIX", "eliq"),
            s3_endpoint_url=env.get("ELIQ_S3_ENDPOINT", ""),
            s3_region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
        ),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "profile": ModelProfileResource(
            profile=env.get("ELIQ_PROFILE", "tiny"), home=str(home),
            datasets_dir=env.get("ELIQ_DATASETS", ""), device=env.get("ELIQ_DEVICE", "auto"),
            backbone=env.get("ELIQ_BACKBONE", ""), overrides_json=env.get("ELIQ_PROFILE_OVERRIDES", ""),
            benchmarks_json=env.get("ELIQ_BENCHMARKS", ""), niqe_params=env.get("ELIQ_NIQE_PARAMS", ""),
            drift_threshold=float(env.get("ELIQ_DRIFT_THRESHOLD", "0.05")),
            prompts_file=env.get("ELIQ_PROMPTS_FILE", ""),
        ),
        "eras": EraRegistryResource(path=str(Path(env.get("ELIQ_ERAS", "eras.yaml")).resolve()),
                                    profile=env.get("ELIQ_PROFILE", "tiny")),
    }


def build_definitions(env: dict[str, str] | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ELIQ_ASSETS,
        asset_checks=ELIQ_CHECKS,
        jobs=[eliq_job, retrain_job],
        sensors=[era_registry_sensor],
        schedules=[weekly_retrain_schedule],
        resources=resources_from_env(env),
    )


defs = build_definitions()
