"""Bulk `eliq score` on a Ray cluster (``eliq score --ray ADDRESS``).

The `eliq score` process is the driver: it reads the inputs, keeps the rows its output already
holds and hands only the rest (path or ``s3://`` strings and prompts, never images) to Ray Data,
``map_batches`` over a fixed pool of :class:`ScorerActor`, each loading the bundle once. Rows come
back to the driver as batches finish and go through score_cli's output handling: the same
columns, the lock on ``--out``, an atomic rewrite every ``--flush-every`` rows (a killed driver
resumes from there), one progress bar.

The bundle travels with the job (its files through Ray's object store, unpacked once per node),
so the workers need no copy of it. The workers read the images: a local runtime reads the
driver's files; a cluster needs local inputs (and a ``--base`` folder) at the same paths on every
node (a shared filesystem), or ``s3://`` inputs, read with each worker's own client (the driver's
ELIQ_S3_ENDPOINT and AWS_* variables are passed to the workers so they read what the driver listed).

Failures: an unreadable image is an error row, as in-process. A worker process that dies (killed,
out of memory, crashed) is restarted by Ray and its batch retried; finished batches are not
redone. A batch whose worker died is retried one image at a time, and an image during which a
worker dies again gets an error row rather than being retried forever.

``import ray`` stays inside functions: the package works without the ``ray`` extra.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from eliq_pipeline.score_cli import (
    S3_ENVIRONMENT,
    S3_SCHEME,
    ScoreItem,
    ScorerUnavailable,
    ScoreSummary,
    _clean_prompt,
    _row,
    _score_batch,
    check_score_settings,
    collect_rows,
    output_lock,
    plan_resume,
)

BUNDLE_COPY_PREFIX = "eliq-bundle"  # the workers' copies of the bundle, in each node's temp dir
# from_items puts every shard in the object store from the driver: past this many, shards hold
# several batches instead of one.
MAX_SHARDS = 10_000
# A batch's worker died, then the worker scoring one of its images alone died too: that image is
# what kills workers (a decoder crash, an image too large for memory), not bad luck.
WORKER_DEATHS_PER_IMAGE = 1


def _row_schema() -> Any:
    import pyarrow as pa

    # Fixed types: a batch whose s_ali (or error) is all empty must still concatenate with the rest.
    return pa.schema([("image", pa.string()), ("prompt", pa.string()), ("s_vis", pa.float64()),
                      ("s_ali", pa.float64()), ("error", pa.string()), ("prompt_truncated", pa.bool_())])


class AttemptLedger:
    """Counts, per batch and per image, the attempts that started and those that finished. An
    attempt that started and never finished died with its worker process. Runs as one Ray actor
    per run, shared by the pool (it outlives the workers it keeps count for)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()

    def begin(self, key: str) -> int:
        """Start an attempt at ``key``; returns how many earlier attempts died."""
        deaths = self.started[key] - self.finished[key]
        self.started[key] += 1
        return deaths

    def end(self, key: str) -> None:
        self.finished[key] += 1


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``, by relative path (what :func:`unpack_folder` writes back)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def unpacked_location(files: dict[str, bytes], prefix: str) -> Path:
    """Where :func:`unpack_folder` puts ``files``: this node's temp dir, named by their content."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return Path(tempfile.gettempdir()) / f"{prefix}-{digest.hexdigest()[:20]}"


def unpack_folder(files: dict[str, bytes], prefix: str) -> Path:
    """``files`` as a folder at :func:`unpacked_location`: written once per node (a restarted or
    second actor finds it), published by a rename so no one sees half of it."""
    target = unpacked_location(files, prefix)
    if _holds(target, files):
        return target
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    if target.exists():  # an older copy a temp cleaner took files from
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # another actor on this node published the same content first
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    # Sizes only: loading the bundle checks every file's hash anyway.
    return folder.is_dir() and all((folder / name).is_file() and (folder / name).stat().st_size == len(data)
                                   for name, data in files.items())


class ScorerActor:
    """One member of the actor pool: loads the bundle once (the in-process path's loader, which
    checks every file against the bundle's manifest), then scores the batches Ray Data hands it,
    one output row per input row."""

    def __init__(self, bundle_files: Any, base: str | None, device: str, threads: int | None, batch_size: int,
                 ledger: Any, environment: dict[str, str]) -> None:
        import ray
        import torch

        from eliq_pipeline.critic.bundle import ELIQScorer

        os.environ.update(environment)  # this actor's own process: S3 settings for score_cli._load
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        bundle = unpack_folder(ray.get(bundle_files), BUNDLE_COPY_PREFIX)
        self.scorer = ELIQScorer.from_pretrained(bundle, base_override=base, device=device)
        self.batch_size, self.ledger = batch_size, ledger

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import ray

        records = batch.to_pylist()
        items = [ScoreItem(r["image"], r["path"] or None, _clean_prompt(r["prompt"])) for r in records]
        batch_key = f"batch:{records[0]['index']}"
        if ray.get(self.ledger.begin.remote(batch_key)) == 0:
            rows = _score_batch(self.scorer, items, self.batch_size)
        else:
            rows = [row for record, item in zip(records, items) for row in self._score_alone(record["index"], item)]
        ray.get(self.ledger.end.remote(batch_key))
        return pa.Table.from_pylist(rows, schema=_row_schema())

    def _score_alone(self, index: int, item: ScoreItem) -> list[dict[str, Any]]:
        import ray

        item_key = f"image:{index}"
        deaths = ray.get(self.ledger.begin.remote(item_key))
        if deaths >= WORKER_DEATHS_PER_IMAGE:
            rows = [_row(item, error=f"the Ray worker process died scoring this image, with its batch and "
                                     f"{deaths} more time(s) alone (crash or out of memory); not retried")]
        else:
            rows = _score_batch(self.scorer, [item], 1)
        ray.get(self.ledger.end.remote(item_key))
        return rows


def default_worker_count(device: str, cluster_resources: dict[str, float]) -> int:
    """The pool size without --ray-workers: one scorer per GPU of the cluster for a CUDA device;
    one for CPU scoring (each scorer holds a whole copy of the backbone in memory)."""
    if _uses_gpu(device):
        return max(1, int(cluster_resources.get("GPU", 0)))
    return 1


def _uses_gpu(device: str) -> bool:
    return device.startswith("cuda")


def _connect(address: str) -> Any:
    """The ray module, connected the pipeline's way (core.compute.connect_ray: ``local`` starts a
    runtime on 127.0.0.1, a connected process is reused, worker logs stay off this terminal)."""
    from eliq_pipeline.core.compute import connect_ray

    try:
        ray = connect_ray(address)
        import ray.data  # noqa: F401  (the extra installs both; fail here, not mid-run)
    except ImportError as exc:
        raise ValueError(f"--ray needs Ray Data: pip install 'eliq-pipeline[ray]' ({exc})") from None
    return ray


def _record(index: int, item: ScoreItem) -> dict[str, Any]:
    # Strings only ("" for none): every shard then has the same column types.
    if item.path is None:
        path = ""
    elif isinstance(item.path, str):  # an s3:// URI
        path = item.path
    else:
        path = str(item.path.absolute())  # the workers run in another folder
    return {"index": index, "image": item.image, "path": path, "prompt": item.prompt or ""}


def _local_or_name(value: str | None) -> str | None:
    """An absolute path for a folder that exists here (workers run in another folder); anything
    else (a hub id) as given."""
    if value is None:
        return None
    local = Path(value).expanduser()
    return str(local.absolute()) if local.exists() else value


def _scored_batches(ray: Any, todo: Sequence[ScoreItem], *, bundle: str | Path, base: str | None, device: str,
                    workers: int | None, threads: int | None, batch_size: int,
                    actor_class: type[ScorerActor]) -> Iterator[list[dict[str, Any]]]:
    from ray.data import ActorPoolStrategy

    resources = ray.cluster_resources()
    use_gpu = _uses_gpu(device)
    if use_gpu and resources.get("GPU", 0) < 1:
        raise ValueError(f"--device {device} needs GPUs but the Ray cluster has none "
                         f"(resources: {', '.join(sorted(resources))})")
    batches = math.ceil(len(todo) / batch_size)
    pool_size = min(workers or default_worker_count(device, resources), batches)  # no idle model copies
    environment = {name: os.environ[name] for name in S3_ENVIRONMENT if name in os.environ}
    if not any(isinstance(item.path, str) and item.path.startswith(S3_SCHEME) for item in todo):
        environment = {}  # credentials travel only when the workers need them
    if not Path(bundle).is_dir():
        raise FileNotFoundError(f"bundle folder {bundle} does not exist")
    ledger = ray.remote(num_cpus=0)(AttemptLedger).remote()
    bundle_files = ray.put(read_folder(Path(bundle)))  # held here for the run: restarted actors read it again

    dataset = ray.data.from_items([_record(i, item) for i, item in enumerate(todo)],
                                  override_num_blocks=min(batches, MAX_SHARDS))
    context = dataset.context  # this dataset's own copy: the process-wide settings stay as they are
    context.enable_progress_bars = False  # the driver's bar is the one progress display
    context.print_on_execution_start = False
    # Ray Data's actor pools restart a dead actor and retry its batch without limit
    # (max_restarts=-1, max_task_retries=-1); the ledger is what stops an image that kills every worker.
    scored = dataset.map_batches(
        actor_class, batch_size=batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=pool_size),
        num_cpus=threads or 1, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={"bundle_files": bundle_files, "base": _local_or_name(base),
                               # Ray gives each actor its own GPU, which it sees as cuda:0.
                               "device": "cuda" if use_gpu else device, "threads": threads,
                               "batch_size": batch_size, "ledger": ledger, "environment": environment})
    try:
        for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield block.to_pylist()
    except ray.exceptions.RayError as exc:  # e.g. the scorers could not load the bundle
        raise ScorerUnavailable(f"scoring on Ray failed: {_worker_error(exc)}") from exc
    finally:
        ray.kill(ledger)


def _worker_error(exc: BaseException) -> str:
    """The worker's own exception line: a Ray error's message ends with the traceback it carries."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def score_items_on_ray(
    items: Sequence[ScoreItem],
    out: Path,
    *,
    address: str,
    bundle: str | Path,
    base: str | None = None,
    device: str = "cpu",
    workers: int | None = None,
    threads: int | None = None,
    batch_size: int = 8,
    flush_every: int = 256,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    actor_class: type[ScorerActor] = ScorerActor,
) -> ScoreSummary:
    """Score ``items`` into ``out`` on the Ray runtime at ``address`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:10001``, or ``local``; a process already connected is reused), resuming from
    what ``out`` holds exactly as :func:`score_cli.score_items` does. A run with nothing left to
    score never connects to Ray."""
    check_score_settings(out, batch_size, flush_every)
    if workers is not None and workers < 1:
        raise ValueError("--ray-workers must be >= 1")
    out = Path(out)
    say = log or (lambda message: None)
    with output_lock(out, say):
        kept, todo = plan_resume(out, items, say)
        if not todo:
            return collect_rows(out, kept, todo, [], flush_every, progress)
        ray = _connect(address)
        with _quiet_ray_data_logs():
            batches = _scored_batches(ray, todo, bundle=bundle, base=base, device=device, workers=workers,
                                      threads=threads, batch_size=batch_size, actor_class=actor_class)
            # closing: should writing fail, the pool and the ledger go now, not when collected.
            with closing(batches):
                return collect_rows(out, kept, todo, batches, flush_every, progress)


@contextmanager
def _quiet_ray_data_logs() -> Iterator[None]:
    """Ray Data's INFO lines (and its note that progress bars are off) would break the one
    progress bar; its warnings and errors still show."""
    quieter = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in quieter.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(max(logger.level, level))
    try:
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)
