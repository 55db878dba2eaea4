"""The shipped tiny profile, unchanged, learns: positives outrank their technical negatives on
held-out prompts (proving the SFT, embeddings, gated fusion, QQT and ranking losses together)."""

import dagster as dg

from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import ERAS_ONE, metadata_of, write_eras

# Like the shipped era-2024 (with one low-quality generator instead of three), on a fresh home.
ONE_ERA = ERAS_ONE.replace("era-a", "era-2024").replace("positive_generators: [flux]", "positive_generators: [flux, sd3]")


def test_default_tiny_profile_reaches_point_eight_heldout_ranking_accuracy(tmp_path):
    env = {"ELIQ_HOME": str(tmp_path / "home"), "ELIQ_ERAS": str(write_eras(tmp_path / "eras.yaml", ONE_ERA)),
           "ELIQ_PROFILE": "tiny", "ELIQ_DEVICE": "cpu"}
    with dg.instance_for_test() as instance:
        runs = materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert [r.status for r in runs] == ["materialized"]
        accuracy = metadata_of(instance, "qqt_model", "era-2024")["heldout_accuracy"]
        sft = metadata_of(instance, "tuned_mllm", "era-2024")["heldout_label_accuracy"]
    assert accuracy["vis_vs_tec"] >= 0.8, accuracy
    assert accuracy["vis_vs_aes"] >= 0.8, accuracy
    assert sft["tec"] > 0.6 and sft["aes"] > 0.6, sft
