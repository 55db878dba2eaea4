"""`eliq materialize` survives being killed, stopped, doubled and its store being emptied.

The materializations run as real `eliq materialize` subprocesses on a persistent instance with the
shipped dagster.yaml (one `gpu` pool slot), and are killed with real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from eliq_pipeline.cli import main
from eliq_pipeline.runner import find_stale, materialize_eras
from eliq_pipeline_tests.pipeline_helpers import materialization_ids, metadata_of, pipeline_env, write_eras

ROOT = Path(__file__).resolve().parents[1]
# Enough SFT steps that a kill lands between two checkpoints; everything else the fast test settings.
SLOW_SFT = {"n_prompts": 6, "sft": {"max_steps": 40, "checkpoint_every": 4}, "scorer": {"epochs": 4}}
TWO_ERAS = """
generators:
  flux: {backend: diffusers, model: "tiny:flux"}
  sd15: {backend: diffusers, model: "tiny:sd"}
eras:
  - {name: era-a, positive_generators: [flux], low_quality_generators: [sd15], seed: 1}
  - {name: era-b, positive_generators: [flux], seed: 2}
"""
SUPERVISION = ("prompts", "positive_images", "negative_images", "comparison_tuples")


@pytest.fixture
def home(tmp_path):
    dagster_home = tmp_path / "home" / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(
        (ROOT / "dagster.yaml").read_text().replace(".eliq/dagster/storage", str(dagster_home / "storage")))
    env = {**os.environ, **pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml", TWO_ERAS),
                                        ELIQ_PROFILE_OVERRIDES=json.dumps(SLOW_SFT)),
           "DAGSTER_HOME": str(dagster_home), "PYTHONWARNINGS": "ignore"}
    env.pop("ELIQ_DATASETS", None)
    return tmp_path / "home", env


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eliq_pipeline.cli", "materialize", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _checkpoints(home: Path, era: str) -> list[Path]:
    root = home / "work" / era / "sft" / "checkpoints"
    return sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"materialize ended before {what}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _instance(env: dict) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def _gpu_slot_holders(instance: dg.DagsterInstance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}


def test_killed_and_stopped_runs_never_block_the_next_and_it_resumes(home, monkeypatch):
    home_dir, env = home

    # SIGTERM inside tuned_mllm (a gpu-pool step) of era-a: the run ends, era-b is never started.
    first = _start(env)
    _wait_for(lambda: _checkpoints(home_dir, "era-a"), first, "era-a's first SFT checkpoint")
    os.killpg(first.pid, signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, output
    assert "stopped by a signal" in output and "again to resume" in output
    with _instance(env) as instance:
        runs = instance.get_runs()
        assert [run.tags["dagster/partition"] for run in runs] == ["era-a"]  # no run of era-b
        assert runs[0].status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        assert _gpu_slot_holders(instance) == set()

    # SIGKILL in tuned_mllm again: the run stays STARTED and holds the only gpu slot.
    second = _start(env)
    seen = {p.name for p in _checkpoints(home_dir, "era-a")}
    _wait_for(lambda: {p.name for p in _checkpoints(home_dir, "era-a")} - seen, second, "a newer SFT checkpoint")
    # While it lives, a second materialization on the same home refuses, naming the holder, and writes nothing.
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    for key in ("ELIQ_HOME", "ELIQ_ERAS", "ELIQ_PROFILE_OVERRIDES", "ELIQ_DEVICE", "ELIQ_PROFILE"):
        monkeypatch.setenv(key, env[key])
    assert main(["materialize"]) == 3
    os.killpg(second.pid, signal.SIGKILL)
    second.wait(timeout=60)
    with _instance(env) as instance:
        dead = [run for run in instance.get_runs() if run.status == dg.DagsterRunStatus.STARTED]
        assert len(dead) == 1 and _gpu_slot_holders(instance) == {dead[0].run_id}
        before = {key: materialization_ids(instance, key, "era-a") for key in SUPERVISION}
    resume_point = int(max(_checkpoints(home_dir, "era-a")).name.split("-")[-1])

    # The next materialization frees the dead run by itself and resumes SFT from its checkpoint.
    third = subprocess.run([sys.executable, "-m", "eliq_pipeline.cli", "materialize", "--era", "era-a"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "marked failed and their pool slots released" in third.stdout
    with _instance(env) as instance:
        assert instance.get_run_by_id(dead[0].run_id).status == dg.DagsterRunStatus.FAILURE
        sft = metadata_of(instance, "tuned_mllm", "era-a")
        assert sft["resumed_from_step"] == resume_point > 0 and sft["steps"] == 40
        # finished supervision (and its images) was not rebuilt
        assert {key: materialization_ids(instance, key, "era-a") for key in SUPERVISION} == before
        assert metadata_of(instance, "benchmark_scores", "era-a")["heldout_accuracy"]
        assert _gpu_slot_holders(instance) == set()


def test_a_second_materialize_with_wait_queues_behind_the_first(tmp_path):
    from eliq_pipeline.run_guard import MaterializeBusy, home_lock

    with home_lock(tmp_path):
        with pytest.raises(MaterializeBusy, match=rf"pid {os.getpid()}.*--wait"):
            with home_lock(tmp_path):
                pass
        holder = subprocess.Popen([sys.executable, "-c", (
            "from pathlib import Path; from eliq_pipeline.run_guard import home_lock\n"
            f"with home_lock(Path({str(tmp_path)!r}), wait=True, log=lambda m: print(m, flush=True)):\n"
            "    print('got it', flush=True)")], stdout=subprocess.PIPE, text=True)
        waited = holder.stdout.readline().strip()  # blocks until the child is queued behind us
        time.sleep(0.5)
        assert holder.poll() is None  # still waiting while we hold the home
    got = holder.communicate(timeout=60)[0].strip()
    assert waited.startswith(f"waiting for another eliq materialize (pid {os.getpid()})") and got == "got it"


def test_an_artifact_gone_from_the_store_is_rebuilt(tmp_path):
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"))
    with dg.instance_for_test() as instance:
        [run] = materialize_eras(instance=instance, env=env, log=lambda _: None)
        assert run.status == "materialized"
        artifacts = tmp_path / "home" / "artifacts" / "eras" / "era-a"
        kept = {key: materialization_ids(instance, key, "era-a") for key in ("prompts", "tuned_mllm", "aspect_embeddings")}
        shutil.rmtree(artifacts / "qqt_model")  # e.g. a bucket lifecycle rule or a clean-up script
        messages: list[str] = []
        [rerun] = materialize_eras(instance=instance, env=env, log=messages.append)
        assert rerun.status == "materialized"
        assert any("qqt_model's artifact" in m and "is gone from the store" in m for m in messages), messages
        assert (artifacts / "qqt_model" / "_COMPLETE").is_file()
        assert {key: materialization_ids(instance, key, "era-a") for key in kept} == kept  # upstream untouched
        assert len(materialization_ids(instance, "benchmark_scores", "era-a")) == 2

        (artifacts / "prompts.parquet").unlink()  # the emptied-store case starts at the first asset
        from eliq_pipeline.definitions import resources_from_env
        from eliq_pipeline.core.eras import load_eras

        resources = resources_from_env(env)
        era = load_eras(env["ELIQ_ERAS"]).era("era-a")
        stale = find_stale(instance, "era-a", era.fingerprint(load_eras(env["ELIQ_ERAS"]).generators),
                           resources["profile"].fingerprint(), [], resources["artifacts"].store())
        assert stale.asset == "prompts" and "prompts.parquet" in stale.reason


def test_a_run_left_not_started_by_a_stopped_process_is_reaped_not_waited_for(tmp_path):
    """A Ctrl-C in the moment between `execute_in_process` creating its run and starting it left
    the run NOT_STARTED; the next `eliq materialize` then skipped the era as "starting" elsewhere."""
    import socket

    from dagster._core.test_utils import create_run_for_test  # a run record with a given status

    from eliq_pipeline.run_guard import HOST_TAG, PID_TAG, STARTED_TAG, reap_dead_runs
    from eliq_pipeline.runner import run_in_flight

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ours = {PID_TAG: str(gone.pid), HOST_TAG: socket.gethostname(), STARTED_TAG: "1.00", "dagster/partition": "era-a"}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        stopped = create_run_for_test(instance, job_name="eliq_job", status=dg.DagsterRunStatus.NOT_STARTED, tags=ours)
        daemons = create_run_for_test(instance, job_name="eliq_job", status=dg.DagsterRunStatus.NOT_STARTED,
                                               tags={"dagster/partition": "era-b"})  # e.g. the sensor's, no pid
        assert run_in_flight(instance, "era-a").run_id == stopped.run_id
        reap_dead_runs(instance, log=lambda _: None)
        assert instance.get_run_by_id(stopped.run_id).status == dg.DagsterRunStatus.FAILURE
        assert run_in_flight(instance, "era-a") is None
        assert instance.get_run_by_id(daemons.run_id).status == dg.DagsterRunStatus.NOT_STARTED
