"""Jobs: the whole ELIQ DAG for one era, and the critic-only retraining job."""

import dagster as dg

from eliq_pipeline.defs.partitions import ERA_PARTITIONS

eliq_job = dg.define_asset_job(
    "eliq_job", selection=dg.AssetSelection.all(), partitions_def=ERA_PARTITIONS,
    description="Build supervision, train the critic and benchmark it, for one era.",
)

retrain_job = dg.define_asset_job(
    "retrain_critic_job",
    selection=dg.AssetSelection.assets("tuned_mllm").downstream(),
    partitions_def=ERA_PARTITIONS,
    description="Retrain the critic and re-benchmark it on the era's existing supervision.",
)
