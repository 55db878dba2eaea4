import dagster as dg
import pytest

from eliq_pipeline.cli import main
from eliq_pipeline.core.eras import ErasFileError
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras


def test_eras_list_and_add(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    eras_path = write_eras(tmp_path / "eras.yaml")
    assert main(["eras", "list", "--eras", str(eras_path)]) == 0
    assert "era-a" in capsys.readouterr().out
    assert main(["eras", "add", "era-b", "--like", "era-a", "--positive-generators", "flux,sd3", "--eras", str(eras_path)]) == 0
    assert "added era era-b" in capsys.readouterr().out
    main(["eras", "list", "--eras", str(eras_path)])
    listing = capsys.readouterr().out
    assert "era-b" in listing and "flux,sd3" in listing


def test_eras_add_with_unknown_generator_fails_clearly(tmp_path, capsys):
    eras_path = write_eras(tmp_path / "eras.yaml")
    before = eras_path.read_text()
    assert main(["eras", "add", "era-b", "--like", "era-a", "--positive-generators", "nope", "--eras", str(eras_path)]) == 2
    assert "unknown generator id 'nope'" in capsys.readouterr().err
    assert eras_path.read_text() == before


def test_malformed_eras_file_fails_before_any_work(tmp_path):
    eras_path = tmp_path / "eras.yaml"
    eras_path.write_text(write_eras(tmp_path / "ok.yaml").read_text().replace("seed: 1", "seed: 1.5"))
    env = pipeline_env(tmp_path / "home", eras_path)
    with dg.instance_for_test() as instance:
        with pytest.raises(ErasFileError, match="era 'era-a'.seed: seed must be an integer"):
            materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert instance.get_dynamic_partitions("eras") == []
        assert instance.get_runs() == []
    assert not (tmp_path / "home").exists()


def test_eras_list_shows_what_the_instance_knows_of_each_era(tmp_path, capsys, monkeypatch):
    """Built, partial, failed, running and unregistered eras, read from the Dagster instance under
    $ELIQ_HOME/dagster without DAGSTER_HOME (as README runs it after `make demo`)."""
    from dagster._core.test_utils import create_run_for_test  # a run record with a given status

    from eliq_pipeline.core.eras import append_era
    from eliq_pipeline.definitions import ELIQ_ASSETS

    eras_path = write_eras(tmp_path / "eras.yaml")
    for name in ("era-b", "era-c", "era-d", "era-e"):
        append_era(eras_path, name, like="era-a")
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("ELIQ_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("eras", ["era-a", "era-b", "era-c", "era-d"])
        for key in [a.key for a in ELIQ_ASSETS]:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="era-a"))
        for key in [a.key for a in ELIQ_ASSETS][:3]:
            for era in ("era-b", "era-c"):
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=era))
        failed = create_run_for_test(instance, job_name="eliq_job", status=dg.DagsterRunStatus.FAILURE,
                                     tags={"dagster/partition": "era-c"})
        running = create_run_for_test(instance, job_name="eliq_job", status=dg.DagsterRunStatus.STARTED,
                                      tags={"dagster/partition": "era-d"})
    assert main(["eras", "list", "--eras", str(eras_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["era-a"].endswith("built, 8/8 assets")
    assert lines["era-b"].endswith("partial, 3/8 assets; missing comparison_tuples, tuned_mllm, aspect_embeddings, "
                                   "qqt_model, benchmark_scores")
    assert f"failure (run {failed.run_id[:8]}), 3/8 assets" in lines["era-c"]
    assert lines["era-d"].endswith(f"running (run {running.run_id[:8]}), 0/8 assets")
    assert lines["era-e"].endswith("not registered")
