"""Pure Python + torch implementation of ELIQ. Nothing in this package imports Dagster."""
