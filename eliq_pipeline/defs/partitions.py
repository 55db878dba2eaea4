"""Eras are a dynamic partition set: adding an era to eras.yaml adds a partition, never touching others."""

import dagster as dg

ERA_PARTITIONS = dg.DynamicPartitionsDefinition(name="eras")
