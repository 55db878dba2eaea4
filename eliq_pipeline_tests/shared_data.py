"""Where tests find real benchmark data: $ELIQ_DATASETS (as CI sets it) or ../shared/datasets.

Tests that need it skip when neither exists; the product itself never looks here.
"""

import os
from pathlib import Path


def datasets_dir() -> Path:
    configured = os.environ.get("ELIQ_DATASETS")
    if configured and Path(configured).is_dir():
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


AGIQA_3K = datasets_dir() / "agiqa-3k"
