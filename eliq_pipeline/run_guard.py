"""What keeps `eliq materialize` safe when a process dies or two of them meet.

* Every run it starts is tagged with the host, pid and start time of its process. A run left
  STARTED by a process that is gone (SIGKILL, OOM, a closed laptop) is marked failed and its
  concurrency-pool slots are released before the next materialization, so the `gpu` pool is
  never held by a dead run. Slots still held by runs that already ended are released too.
  (Dagster's own run monitoring does this for runs launched by the daemon, see dagster.yaml;
  `execute_in_process` runs have no daemon watching them.)
* One `eliq materialize` per $ELIQ_HOME at a time: an exclusive `flock` on a lock file, which the
  kernel releases when its holder dies, so a killed run never leaves a stale lock behind.
* A SIGINT / SIGTERM during a run is turned by Dagster into a failed run; `interrupted` tells the
  runner so that it stops instead of starting the next era.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg
import psutil

from eliq_pipeline.core.locks import LockBusy, exclusive_lock

PID_TAG, HOST_TAG, STARTED_TAG = "eliq/pid", "eliq/host", "eliq/process_started"
# Statuses of a run that some process is (or was) working on. NOT_STARTED too: a run that
# `execute_in_process` created is NOT_STARTED until its first step, and a process stopped in that
# moment leaves it so for good (only runs carrying this process's tags are reaped, so a daemon's
# queued or starting runs are not touched).
_IN_FLIGHT = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
              dg.DagsterRunStatus.CANCELING)
LOCK_NAME = "materialize.lock"


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a later one can tell whether the run's worker still lives."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), STARTED_TAG: f"{_process_started(pid) or 0:.2f}"}


def _worker_alive(tags: dict[str, str]) -> bool:
    pid = int(tags[PID_TAG])
    started = _process_started(pid)
    # A reused pid belongs to another process: its start time differs from the one recorded.
    return started is not None and abs(started - float(tags.get(STARTED_TAG, started))) < 1.0


def reap_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Mark runs of this host whose `eliq materialize` process is gone as failed, and release
    every pool slot held or awaited by a run that is no longer running. Returns the run ids freed."""
    host = socket.gethostname()
    dead = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(_IN_FLIGHT))):
        tags = run.tags
        if PID_TAG in tags and tags.get(HOST_TAG) == host and not _worker_alive(tags):
            instance.report_run_failed(run, message=f"the eliq materialize process (pid {tags[PID_TAG]}) is gone; "
                                                    "marked failed by the next eliq materialize")
            dead.append(run.run_id)
    storage = instance.event_log_storage
    holders = set(dead)
    for key in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(key)
        holders |= {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
    freed = []
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run_id in dead or run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    if dead:
        log(f"{len(dead)} run(s) left unfinished by a killed eliq materialize ({', '.join(r[:8] for r in dead)}): "
            f"marked failed and their pool slots released; resuming from what they finished")
    elif freed:
        log(f"released pool slots still held by {len(freed)} ended run(s) ({', '.join(r[:8] for r in freed)})")
    return freed


class MaterializeBusy(RuntimeError):
    """Another `eliq materialize` holds this $ELIQ_HOME."""


@contextmanager
def home_lock(home: Path, wait: bool = False, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold $ELIQ_HOME exclusively; refuse (or, with `wait`, wait) while another process holds it."""
    try:
        with exclusive_lock(home / LOCK_NAME, wait=wait, on_wait=lambda holder: log(
                f"waiting for another eliq materialize (pid {holder}) on {home} to finish…")):
            yield
    except LockBusy as busy:
        raise MaterializeBusy(
            f"another eliq materialize (pid {busy.holder}) is running on {home}; wait for it to finish, "
            f"stop it, or pass --wait to queue behind it") from None


def interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether a run ended because its process received SIGINT / SIGTERM."""
    for event in result.all_events:
        data = event.event_specific_data
        if event.is_run_failure and getattr(getattr(data, "failure_reason", None), "value", None) == "UNEXPECTED_TERMINATION":
            return True
        error = getattr(data, "error", None)
        if event.is_step_failure and error is not None and error.cls_name == "DagsterExecutionInterruptedError":
            return True
    return False

