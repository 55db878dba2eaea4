"""The compute backends on a real local Ray runtime: same results as in-process, one model load
per worker, a bad input reported alone, a worker killed mid-shard retried without redoing
finished shards."""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from eliq_pipeline.core.compute import InProcessCompute, RayCompute, make_compute, raise_failures


@dataclass(frozen=True)
class CountingFactory:
    """Loads a 'model' (a multiplier) and records each load in a file."""

    log_dir: str
    factor: int = 3

    def __call__(self) -> int:
        with open(Path(self.log_dir) / "loads.txt", "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return self.factor


@dataclass(frozen=True)
class Multiply:
    """The work: item * model; records every item it runs; raises on negative items; kills its
    own process (SIGKILL) the first time it meets `kill_on`."""

    log_dir: str
    kill_on: int | None = None

    def __call__(self, model: int, items: list) -> list:
        out = []
        for item in items:
            with open(Path(self.log_dir) / "runs.txt", "a") as handle:
                handle.write(f"{item}\n")
            marker = Path(self.log_dir) / "killed"
            if item == self.kill_on and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if item < 0:
                raise ValueError(f"negative input {item}")
            out.append(item * model)
        return out


def _run(compute, tmp_path: Path, shards, kill_on=None):
    got: dict[int, list] = {}

    def on_result(index, items, results):
        got.setdefault(index, []).extend(zip(items, results))

    failures = compute.map_shards(CountingFactory(str(tmp_path)), Multiply(str(tmp_path), kill_on), shards,
                                  on_result, describe=lambda item: f"item {item}")
    return got, failures


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


SHARDS = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]


def test_in_process_runs_every_shard_with_one_model_load(tmp_path):
    got, failures = _run(InProcessCompute(), tmp_path, SHARDS)
    assert failures == []
    assert {i: [r for _, r in pairs] for i, pairs in got.items()} == {0: [3, 6, 9], 1: [12, 15], 2: [18, 21, 24], 3: [27]}
    assert len(_lines(tmp_path / "loads.txt")) == 1


def test_ray_results_equal_in_process_and_each_worker_loads_once(ray_runtime, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    local, _ = _run(InProcessCompute(), tmp_path / "a", SHARDS)
    remote, failures = _run(RayCompute(address=ray_runtime, workers=2, gpu_resource="fake_gpu"), tmp_path / "b", SHARDS)
    assert failures == []
    assert remote == local
    loads = _lines(tmp_path / "b" / "loads.txt")
    assert len(loads) == 2 and len(set(loads)) == 2  # two actors, two processes, one load each
    assert os.getpid() not in {int(p) for p in loads}  # the work ran in Ray's worker processes
    assert sorted(_lines(tmp_path / "b" / "runs.txt"), key=int) == [str(i) for i in range(1, 10)]  # nothing twice


def test_ray_starts_no_more_actors_than_there_are_shards(ray_runtime, tmp_path):
    compute = RayCompute(address=ray_runtime, workers=2, gpu_resource="fake_gpu")
    assert _run(compute, tmp_path, []) == ({}, [])
    assert _run(compute, tmp_path, iter([])) == ({}, [])  # a lazy iterable with nothing missing
    assert not (tmp_path / "loads.txt").exists()  # nothing missing: no actor was started
    got, _ = _run(compute, tmp_path, [[5]])
    assert got == {0: [(5, 15)]} and len(_lines(tmp_path / "loads.txt")) == 1  # one shard, one actor


@pytest.mark.parametrize("backend", ["in_process", "ray"])
def test_a_bad_input_is_reported_alone_and_the_rest_completes(backend, request, tmp_path):
    options = {}
    if backend == "ray":
        options = {"address": request.getfixturevalue("ray_runtime"), "workers": 1, "gpu_resource": "fake_gpu"}
    got, failures = _run(make_compute(backend, **options), tmp_path, [[1, 2], [3, -4, 5], [6]])
    assert [(f.shard, f.item) for f in failures] == [(1, "item -4")]
    assert "ValueError: negative input -4" in failures[0].error
    assert sorted(item for pairs in got.values() for item, _ in pairs) == [1, 2, 3, 5, 6]
    with pytest.raises(RuntimeError, match=r"1 item\(s\) failed.*item -4: ValueError"):
        raise_failures(failures, "test work")


def test_a_worker_killed_mid_shard_is_retried_and_finished_shards_are_not_redone(ray_runtime, tmp_path):
    compute = RayCompute(address=ray_runtime, workers=1, gpu_resource="fake_gpu", max_retries=2)
    got, failures = _run(compute, tmp_path, SHARDS, kill_on=7)
    assert (tmp_path / "killed").exists()  # the worker process did die
    assert failures == []
    assert {i: [r for _, r in pairs] for i, pairs in got.items()} == {0: [3, 6, 9], 1: [12, 15], 2: [18, 21, 24], 3: [27]}
    runs = _lines(tmp_path / "runs.txt")
    # shards 0 and 1 ran once; shard 2 ran to item 7, died, and was retried whole; shard 3 (queued
    # on the same worker, retried in any order) ran once
    assert runs[:7] == ["1", "2", "3", "4", "5", "6", "7"]
    assert Counter(runs) == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1, "6": 2, "7": 2, "8": 1, "9": 1}
    assert len(_lines(tmp_path / "loads.txt")) == 2  # the restarted actor loaded its model again
