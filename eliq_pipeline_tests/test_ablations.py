"""Ablation switches are plain profile overrides that change what the pipeline trains on."""

import json

import dagster as dg

from eliq_pipeline.runner import materialize_eras
from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline_tests.pipeline_helpers import FAST_OVERRIDES, metadata_of, pipeline_env, write_eras


def test_conventional_only_tec_and_ali_supervision_with_an_mlp_head(tmp_path):
    overrides = {**FAST_OVERRIDES, "negative_families": ["conventional"], "supervision_aspects": ["tec", "ali"],
                 "scorer": {**FAST_OVERRIDES["scorer"], "head": "mlp"}}
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"),
                       ELIQ_PROFILE_OVERRIDES=json.dumps(overrides))
    with dg.instance_for_test() as instance:
        assert [r.status for r in materialize_eras(instance=instance, env=env, log=lambda _: None)] == ["materialized"]
        sft = metadata_of(instance, "tuned_mllm", "era-a")["heldout_label_accuracy"]
    assert set(sft) == {"tec", "ali"}  # no aesthetic labels were trained or evaluated
    store = LocalArtifactStore(tmp_path / "home" / "artifacts")
    tuples = store.get_table("eras/era-a/comparison_tuples.parquet").to_pylist()
    assert {t[f"{a}_family"] for t in tuples for a in ("tec", "aes", "ali")} == {"conventional"}
    config = json.loads((store.get_dir("eras/era-a/qqt_model") / "config.json").read_text())["config"]
    assert config["head"] == "mlp" and config["aspects"] == ["tec", "ali"]
