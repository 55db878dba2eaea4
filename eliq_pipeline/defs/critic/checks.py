"""Asset checks on the critic (paper 3.3)."""


import json
from pathlib import Path

import dagster as dg

from eliq_pipeline.defs.critic.assets import qqt_model
from eliq_pipeline.defs.common import era_asset_check
from eliq_pipeline.defs.metadata import accuracy_metadata


@era_asset_check(asset=qqt_model, description=(
    "The scorer ranks held-out positives above their negatives better than chance (0.5) for every "
    "comparison: s_vis over the technical and the aesthetic negative, s_ali over the mismatched prompt "
    "(WARN: the tiny profile's toy generators do not depict their prompts)."))
def qqt_beats_chance(qqt_model: Path) -> dg.AssetCheckResult:
    report = json.loads((qqt_model / "training_report.json").read_text())
    accuracy = report["heldout_accuracy"]
    passed = bool(accuracy) and all(value > 0.5 for value in accuracy.values())
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={**accuracy_metadata(accuracy), "heldout_accuracy": dg.MetadataValue.json(accuracy)})
