"""The era registry file as a resource, so tests and deployments can point at their own."""

from __future__ import annotations

import dagster as dg

from eliq_pipeline.core.eras import Era, EraRegistry, check_runnable, load_eras


class EraRegistryResource(dg.ConfigurableResource):
    path: str = "eras.yaml"
    # The active profile: when set, `era()` and `load_runnable()` also check that the eras can run
    # on it (models for the profile, import sources present) before any asset does work.
    profile: str = ""
    s3_endpoint_url: str = ""  # where `s3://` import sources are checked (the store's endpoint)

    def load(self) -> EraRegistry:
        """The parsed registry (structure, types, params, tiny architectures validated)."""
        return load_eras(self.path)

    def load_runnable(self, era_names: list[str] | None = None) -> EraRegistry:
        """The registry, with `era_names` (default: all) checked runnable on the active profile."""
        registry = self.load()
        if self.profile:
            check_runnable(registry, self.profile, era_names, self.s3_endpoint_url or None)
        return registry

    def era(self, name: str) -> Era:
        registry = self.load()
        era = registry.era(name)
        if self.profile:
            check_runnable(registry, self.profile, [name], self.s3_endpoint_url or None)
        return era
