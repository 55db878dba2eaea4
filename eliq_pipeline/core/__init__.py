"""The Dagster-free foundation: atomic publishing, the artifact store, images, registries, the era
registry and the model profiles."""
