"""Asset values flow through the era IO manager: Dagster sees them, and they load by partition."""

from pathlib import Path

import dagster as dg
import pyarrow as pa

from eliq_pipeline.definitions import ELIQ_ASSETS
from eliq_pipeline.defs.critic.assets import embedding_namespace
from eliq_pipeline.definitions import build_definitions, load_era_value
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import metadata_of, pipeline_env, write_eras


def test_every_asset_after_prompts_takes_its_upstream_values_as_inputs():
    inputs = {a.key.to_user_string(): {k.to_user_string() for k in a.keys_by_input_name.values()} for a in ELIQ_ASSETS}
    assert inputs["prompts"] == set()
    assert inputs["negative_images"] == {"prompts", "positive_images"}
    assert inputs["aspect_embeddings"] == {"comparison_tuples", "tuned_mllm"}
    # tuned_mllm: its processor says at what size the critic sees a benchmark (the baselines are read there too)
    assert inputs["benchmark_scores"] == {"positive_images", "comparison_tuples", "tuned_mllm", "qqt_model"}
    assert all(not a.op.ins or a.keys_by_input_name for a in ELIQ_ASSETS)


def test_values_load_by_era_as_tables_and_model_folders(tmp_path):
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"))
    with dg.instance_for_test() as instance:
        [run] = materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert run.status == "materialized", run.detail
        defs = build_definitions(env)
        head = defs.load_asset_value("qqt_model", partition_key="era-a", instance=instance)
        assert isinstance(head, Path) and (head / "config.json").is_file() and (head / "model.safetensors").is_file()
        tuples = defs.load_asset_value("comparison_tuples", partition_key="era-a", instance=instance)
        assert isinstance(tuples, pa.Table) and {"train", "heldout"} == set(tuples.column("split").to_pylist())
        embeddings = defs.load_asset_value("aspect_embeddings", partition_key="era-a", instance=instance)
        assert embedding_namespace(embeddings) == metadata_of(instance, "aspect_embeddings", "era-a")["adapter_hash"]
        # the IO manager records where each value went; the runner checks it is still there
        assert metadata_of(instance, "tuned_mllm", "era-a")["artifacts"] == ["eras/era-a/tuned_mllm/"]
        assert metadata_of(instance, "prompts", "era-a")["artifacts"] == ["eras/era-a/prompts.parquet"]
    # outside any instance that knows the era (the CLI's case)
    assert load_era_value("negative_images", "era-a", env).num_rows > 0
