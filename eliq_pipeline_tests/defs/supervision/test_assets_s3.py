"""The supervision assets run unchanged against S3 (moto in server mode on 127.0.0.1)."""

import boto3
import dagster as dg

from eliq_pipeline.defs.supervision.assets import comparison_tuples, negative_images, positive_images, prompts
from eliq_pipeline.defs.supervision.checks import negatives_differ_from_positives, positive_images_decode, tuples_reference_valid_images
from eliq_pipeline.definitions import resources_from_env
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras


def test_supervision_assets_materialize_into_s3(tmp_path, s3_endpoint, s3_bucket):
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"), ELIQ_STORE="s3",
                       ELIQ_S3_BUCKET=s3_bucket, ELIQ_S3_PREFIX="team/eliq", ELIQ_S3_ENDPOINT=s3_endpoint)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-a"])
        result = dg.materialize(
            [prompts, positive_images, negative_images, comparison_tuples,
             positive_images_decode, negatives_differ_from_positives, tuples_reference_valid_images],
            instance=instance, partition_key="era-a", resources=resources_from_env(env),
        )
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="team/eliq/")
            for o in page.get("Contents", [])]
    assert "team/eliq/eras/era-a/comparison_tuples.parquet" in keys
    assert sum(k.startswith("team/eliq/images/") for k in keys) >= 12 + 6 * 3  # positives, low-quality, negatives
    assert not (tmp_path / "home" / "artifacts" / "eras").exists()  # nothing went to the local backend


def test_a_user_prompt_file_replaces_the_bank(tmp_path):
    from eliq_pipeline.core.storage import LocalArtifactStore

    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("prompt,category\nA bowl of ramen on a wooden table,food\nA crowded night market on a city street,\n")
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"), ELIQ_PROMPTS_FILE=str(prompts_file))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-a"])
        result = dg.materialize([prompts], instance=instance, partition_key="era-a", resources=resources_from_env(env))
    assert result.success
    rows = LocalArtifactStore(tmp_path / "home" / "artifacts").get_table("eras/era-a/prompts.parquet").to_pylist()
    assert [r["text"] for r in rows] == ["A bowl of ramen on a wooden table", "A crowded night market on a city street"]
    assert rows[0]["category"] == "Food" and rows[1]["category"] == "Urban Scenes"  # keyword rules label the second
