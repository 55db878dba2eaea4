import os
import shlex
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from eliq_pipeline.cli import main, ui_command
from eliq_pipeline.core.eras import ErasFileError
from eliq_pipeline.runner import materialize_eras
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras

ROOT = Path(__file__).resolve().parents[1]


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


def test_ui_command_names_the_runs_home_and_settings_and_no_secret(tmp_path, monkeypatch):
    # `eliq materialize` ends with the line that browses its runs; after `make cpu-demo` a bare
    # `make ui` opened the default home with the tiny profile instead.
    monkeypatch.chdir(tmp_path)
    assert ui_command({}) == "make ui"
    assert ui_command({"ELIQ_HOME": ".eliq", "PATH": "/bin"}) == "make ui"  # the default home, other variables
    line = ui_command({"ELIQ_HOME": "cpu home", "ELIQ_PROFILE": "cpu", "ELIQ_ERAS": "eras-cpu.yaml",
                       "ELIQ_PROFILE_OVERRIDES": '{"sft": {"max_steps": 5}}', "ELIQ_LLM_API_KEY": "s3cret"})
    assert "s3cret" not in line and line.endswith("# with ELIQ_LLM_API_KEY set as for this run")
    words = shlex.split(line.split("#")[0])
    assert words[-2:] == ["make", "ui"]
    assert dict(word.split("=", 1) for word in words[:-2]) == {
        "ELIQ_ERAS": str(tmp_path / "eras-cpu.yaml"), "ELIQ_HOME": str(tmp_path / "cpu home"),
        "ELIQ_PROFILE": "cpu", "ELIQ_PROFILE_OVERRIDES": '{"sft": {"max_steps": 5}}'}


def test_the_ui_command_opens_the_runs_instance(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {"ELIQ_HOME": str(tmp_path / "home"), "ELIQ_PROFILE": "cpu", "ELIQ_ERAS": str(ROOT / "eras-cpu.yaml"),
           "ELIQ_SUPAGRUEN": str(tmp_path / "renders")}
    line = ui_command(env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ELIQ_") and k != "DAGSTER_HOME"}
    result = subprocess.run(["bash", "-c", f"{line} -n"], cwd=ROOT, env=clean, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    recipe = result.stdout
    for key in ("ELIQ_HOME", "ELIQ_ERAS", "ELIQ_SUPAGRUEN"):
        assert f"{key}={env[key]} " in recipe, key
    assert f"DAGSTER_HOME={tmp_path / 'home'}/dagster " in recipe
    assert not (tmp_path / "home").exists()  # a dry run creates nothing
