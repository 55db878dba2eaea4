"""The era sensor: new eras in eras.yaml become partitions and get their runs requested."""


import dagster as dg

from eliq_pipeline.core.eras import ErasFileError
from eliq_pipeline.defs.jobs import eliq_job, retrain_job
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import EraRegistryResource


@dg.sensor(job=eliq_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def era_registry_sensor(context: dg.SensorEvaluationContext, eras: EraRegistryResource) -> dg.SensorResult | dg.SkipReason:
    try:
        names = eras.load().names()
        known = set(context.instance.get_dynamic_partitions(ERA_PARTITIONS.name))
        new = [name for name in names if name not in known]
        if not new:
            return dg.SkipReason("no new eras")
        eras.load_runnable(new)  # a new era that cannot run on the profile must not add anything either
    except ErasFileError as exc:  # a broken file must not add anything
        return dg.SkipReason(f"eras file rejected: {exc}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"era-{name}", partition_key=name) for name in new],
        dynamic_partitions_requests=[ERA_PARTITIONS.build_add_request(new)],
    )


@dg.schedule(job=retrain_job, cron_schedule="0 3 * * 1", default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext, eras: EraRegistryResource):
    """Every Monday 03:00: retrain and re-benchmark the newest era's critic (start it in the UI)."""
    names = eras.load().names()
    if not names:
        return dg.SkipReason("no eras")
    return dg.RunRequest(run_key=None, partition_key=names[-1])
