"""Evaluation (paper 4), free of Dagster: benchmarks in their standard layouts, correlation metrics,
the label-free and weak-supervised protocols, NIQE / PIQE baselines and plots."""
