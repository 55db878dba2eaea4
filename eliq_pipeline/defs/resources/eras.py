"""The era registry file as a resource, so tests and deployments can point at their own."""

from __future__ import annotations

import json

import dagster as dg

from eliq_pipeline.core.eras import Era, EraRegistry, check_runnable, load_eras


class EraRegistryResource(dg.ConfigurableResource):
    path: str = "eras.yaml"
    # The active profile: when set, `era()` and `load_runnable()` also check that the eras can run
    # on it (models for the profile, import sources present) before any asset does work.
    profile: str = ""
    s3_endpoint_url: str = ""  # where `s3://` import sources are checked (the store's endpoint)
    # JSON object NAME -> value filling the `${NAME}` references of generator models (the ELIQ_*
    # environment variables, see definitions.resources_from_env)
    variables_json: str = ""

    def variables(self) -> dict[str, str]:
        if not self.variables_json.strip():
            return {}
        value = json.loads(self.variables_json)
        if not isinstance(value, dict):
            raise ValueError(f"variables_json must be a JSON object, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}

    def load(self) -> EraRegistry:
        """The parsed registry (structure, types, params, tiny architectures validated)."""
        return load_eras(self.path, self.variables())

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
