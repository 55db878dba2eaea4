"""The shipped tiny profile and era-2024 of the shipped eras.yaml, unchanged, learn: positives
outrank their technical and aesthetic negatives on held-out prompts (proving the SFT, embeddings,
gated fusion, QQT and ranking losses together), as `make demo` shows."""

from pathlib import Path

import dagster as dg
import pytest

from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import metadata_of

pytestmark = pytest.mark.slow  # trains the shipped era-2024 as make demo does: minutes

SHIPPED_ERAS = Path(__file__).resolve().parents[1] / "eras.yaml"


def test_default_tiny_profile_reaches_point_eight_heldout_ranking_accuracy(tmp_path):
    env = {"ELIQ_HOME": str(tmp_path / "home"), "ELIQ_ERAS": str(SHIPPED_ERAS), "ELIQ_PROFILE": "tiny",
           "ELIQ_DEVICE": "cpu"}
    with dg.instance_for_test() as instance:
        runs = materialize_eras(["era-2024"], instance=instance, env=env, log=lambda _: None)
        assert [r.status for r in runs] == ["materialized"]
        accuracy = metadata_of(instance, "qqt_model", "era-2024")["heldout_accuracy"]
        sft = metadata_of(instance, "tuned_mllm", "era-2024")["heldout_label_accuracy"]
    assert accuracy["vis_vs_tec"] >= 0.8, accuracy
    assert accuracy["vis_vs_aes"] >= 0.8, accuracy
    assert sft["tec"] > 0.6 and sft["aes"] > 0.6, sft
