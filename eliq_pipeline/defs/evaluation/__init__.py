"""Evaluation asset and checks (paper 4): benchmark_scores and era-over-era drift."""
