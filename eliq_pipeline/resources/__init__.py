"""Dagster resources: where artifacts live, the score warehouse, and the model profile."""

from eliq_pipeline.resources.eras import EraRegistryResource
from eliq_pipeline.resources.profile import ModelProfileResource
from eliq_pipeline.resources.storage import ArtifactStoreResource
from eliq_pipeline.resources.warehouse import WarehouseResource

__all__ = ["ArtifactStoreResource", "EraRegistryResource", "ModelProfileResource", "WarehouseResource"]
