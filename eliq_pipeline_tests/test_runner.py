"""Staleness from Dagster's data versions: a value rebuilt with other content makes what was built
from it stale; the same content does not."""

import hashlib

import dagster as dg

from eliq_pipeline.core.eras import load_eras
from eliq_pipeline.defs.common import content_digest, era_data_version
from eliq_pipeline.definitions import resources_from_env
from eliq_pipeline.defs.supervision.assets import positive_images, prompts
from eliq_pipeline.runner import find_stale
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras


def _stale(instance, env):
    resources = resources_from_env(env)
    registry = load_eras(env["ELIQ_ERAS"])
    return find_stale(instance, "era-a", registry.era("era-a").fingerprint(registry.generators),
                      resources["profile"].fingerprint(), [], resources["artifacts"].store())


def _latest(instance, key):
    return instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=["era-a"]),
                                           limit=1).records[0].asset_materialization


def test_a_rebuilt_upstream_value_makes_its_downstream_stale(tmp_path):
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-a"])
        assert dg.materialize([prompts, positive_images], instance=instance, partition_key="era-a",
                              resources=resources_from_env(env)).success
        built = _latest(instance, "positive_images")
        # positive_images recorded the data version of the prompts it read (a partitioned input:
        # as the sha256 of the versions of the partitions read, here one)
        version = _latest(instance, "prompts").tags["dagster/data_version"]
        assert built.tags["dagster/input_data_version/prompts"] == hashlib.sha256(version.encode()).hexdigest()
        assert _stale(instance, env).asset == "negative_images"  # not materialized yet

        def rebuild_prompts(version: str) -> None:  # e.g. from the UI, with the same settings
            old = _latest(instance, "prompts")
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key="prompts", partition="era-a", metadata=old.metadata,
                tags={**old.tags, "dagster/data_version": version}))

        rebuild_prompts(_latest(instance, "prompts").tags["dagster/data_version"])  # same content
        assert _stale(instance, env).asset == "negative_images"
        rebuild_prompts("another-content")
        stale = _stale(instance, env)
        assert (stale.asset, stale.reason) == ("positive_images", "positive_images was built from an earlier prompts")


def test_data_versions_follow_content_era_and_profile(tmp_path):
    import pyarrow as pa

    table = pa.table({"x": [1, 2]})
    meta = {"era_fingerprint": "e1", "profile_fingerprint": "p1"}
    assert era_data_version(meta, table) == era_data_version(dict(meta), pa.table({"x": [1, 2]}))
    assert era_data_version(meta, table) != era_data_version(meta, pa.table({"x": [1, 3]}))
    assert era_data_version(meta, table) != era_data_version({**meta, "era_fingerprint": "e2"}, table)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"1")
    before = content_digest(folder)
    (folder / "w.bin").write_bytes(b"2")
    assert content_digest(folder) != before


def test_a_partition_the_sensor_is_building_is_not_built_again(tmp_path):
    """The sensor's run of era-a is running (its gpu steps waiting on the pool): `eliq materialize`
    skips era-a, naming that run, and starts no second run of the partition."""
    import dagster as dg
    from dagster._core.test_utils import create_run_for_test  # a run record with a given status

    from eliq_pipeline.runner import materialize_eras
    from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras

    eras_path = write_eras(tmp_path / "eras.yaml")
    env = pipeline_env(tmp_path / "home", eras_path)
    logged = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("eras", ["era-a"])
        queued = create_run_for_test(instance, job_name="eliq_job", status=dg.DagsterRunStatus.STARTED,
                                     tags={"dagster/partition": "era-a", "dagster/sensor_name": "era_registry_sensor"})
        runs = materialize_eras(instance=instance, env=env, log=logged.append)
        assert [(r.era, r.status, r.run_id) for r in runs] == [("era-a", "in progress elsewhere", queued.run_id)]
        assert f"era era-a: skipped, run {queued.run_id[:8]} of era_registry_sensor is running on it" in "\n".join(logged)
        assert [r.run_id for r in instance.get_runs()] == [queued.run_id]  # no second run of the partition
        assert not instance.fetch_materializations(dg.AssetKey("prompts"), limit=1).records
