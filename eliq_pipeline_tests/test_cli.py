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
