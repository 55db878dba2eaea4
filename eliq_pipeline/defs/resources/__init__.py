"""Dagster resources: where artifacts live, the score warehouse, the model profile and where batch work runs."""

from eliq_pipeline.defs.resources.compute import ComputeResource
from eliq_pipeline.defs.resources.eras import EraRegistryResource
from eliq_pipeline.defs.resources.profile import ModelProfileResource
from eliq_pipeline.defs.resources.storage import ArtifactStoreResource
from eliq_pipeline.defs.resources.warehouse import WarehouseResource

__all__ = ["ArtifactStoreResource", "ComputeResource", "EraRegistryResource", "ModelProfileResource", "WarehouseResource"]
