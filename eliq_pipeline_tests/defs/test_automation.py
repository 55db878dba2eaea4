import dagster as dg

from eliq_pipeline.definitions import build_definitions
from eliq_pipeline.core.eras import append_era
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import EraRegistryResource
from eliq_pipeline.defs.automation import era_registry_sensor
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras


def _evaluate(instance, eras_path):
    context = dg.build_sensor_context(instance=instance, resources={"eras": EraRegistryResource(path=str(eras_path))})
    return era_registry_sensor(context)


def test_sensor_adds_new_eras_and_requests_their_runs(tmp_path):
    eras_path = write_eras(tmp_path / "eras.yaml")
    with dg.instance_for_test() as instance:
        result = _evaluate(instance, eras_path)
        assert [r.partition_key for r in result.run_requests] == ["era-a"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["era-a"]
        instance.add_dynamic_partitions(ERA_PARTITIONS.name, ["era-a"])  # what the daemon does with the request
        assert isinstance(_evaluate(instance, eras_path), dg.SkipReason)
        append_era(eras_path, "era-b", like="era-a")
        result = _evaluate(instance, eras_path)
        assert [r.partition_key for r in result.run_requests] == ["era-b"]


def test_sensor_skips_a_malformed_file_without_adding_anything(tmp_path):
    eras_path = tmp_path / "eras.yaml"
    eras_path.write_text("generators: {}\neras:\n  - {name: x, positive_generators: [ghost], seed: 1}\n")
    with dg.instance_for_test() as instance:
        result = _evaluate(instance, eras_path)
        assert isinstance(result, dg.SkipReason)
        assert "unknown generator id 'ghost'" in result.skip_message


def test_definitions_load_with_eight_assets_checks_jobs_sensor_and_schedule(tmp_path):
    defs = build_definitions(pipeline_env(tmp_path, write_eras(tmp_path / "eras.yaml")))
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"prompts", "positive_images", "negative_images", "comparison_tuples",
                    "tuned_mllm", "aspect_embeddings", "qqt_model", "benchmark_scores"}
    assert defs.resolve_job_def("eliq_job") and defs.resolve_job_def("retrain_critic_job")
    assert defs.resolve_sensor_def("era_registry_sensor")
    assert defs.resolve_schedule_def("weekly_retrain_schedule")
    checks = defs.resolve_asset_graph().asset_check_keys
    assert {c.name for c in checks} >= {"tuples_reference_valid_images", "negatives_differ_from_positives"}
