"""The era registry file as a resource, so tests and deployments can point at their own."""

from __future__ import annotations

import dagster as dg

from eliq_pipeline.eras import Era, EraRegistry, load_eras


class EraRegistryResource(dg.ConfigurableResource):
    path: str = "eras.yaml"

    def load(self) -> EraRegistry:
        return load_eras(self.path)

    def era(self, name: str) -> Era:
        return self.load().era(name)
