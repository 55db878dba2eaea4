"""eliq-pipeline: a Dagster-orchestrated implementation of ELIQ (arXiv 2602.03558)."""

__version__ = "0.1.0"
