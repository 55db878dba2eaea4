"""Dagster resources: where artifacts live, the score warehouse, and the model profile."""

from eliq_pipeline.defs.resources.eras import EraRegistryResource
from eliq_pipeline.defs.resources.profile import ModelProfileResource
from eliq_pipeline.defs.resources.storage import ArtifactStoreResource
from eliq_pipeline.defs.resources.warehouse import WarehouseResource

__all__ = ["ArtifactStoreResource", "EraRegistryResource", "ModelProfileResource", "WarehouseResource"]
