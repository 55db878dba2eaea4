"""The Dagster layer, one folder per paper section (assets and their checks), plus resources,
partitions, jobs and automation; `eliq_pipeline.definitions` assembles them into the code location."""
