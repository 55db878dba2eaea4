"""Where model-running batch work runs: in this process (the default) or on a Ray cluster.

Work is a list of shards (lists of picklable items). A *model factory* (picklable, no argument)
loads one model; ``work(model, items)`` turns one shard into one result per item. The driver
hands every shard's results to ``on_result`` as they arrive and the callers persist them at once
(image cache, embedding shards), so a finished shard is never redone: a killed driver resumes
from what was persisted, and only missing items are ever sent.

On Ray each worker is an actor that holds one model (``num_gpus=1`` when the cluster has GPUs)
and loads it once. A worker killed mid-shard is restarted and the shard retried (Ray's
``max_restarts`` / ``max_task_retries``). On both backends a shard that raises is retried item by
item, so a bad input fails alone: it comes back as an :class:`ItemFailure` naming the item, and
the rest of the shard completes.

Hand-written on purpose (a loop around Ray's actor API rather than Ray Data): the callers'
caches decide what is missing and how results are stored, and results must reach them shard by
shard, in the driver, for the resume guarantee above.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence, Sized

from eliq_pipeline.core.registry import Registry

ModelFactory = Callable[[], Any]
Work = Callable[[Any, list], list]
OnResult = Callable[[int, list, list], None]  # (shard index, items that succeeded, their results)


@dataclass(frozen=True)
class ItemFailure:
    """An item whose work raised, alone in its shard (a bad input, not a lost worker)."""

    shard: int
    item: str  # the caller's description of the item
    error: str


class Compute(Protocol):
    """A backend that runs shards of model work (see the module docstring)."""

    name: str

    def map_shards(self, factory: ModelFactory, work: Work, shards: Iterable[list], on_result: OnResult,
                   describe: Callable[[Any], str] = repr) -> list[ItemFailure]:
        """Run ``work`` over every shard (an iterable, read lazily); ``on_result`` gets each
        shard's results as they arrive. Returns the items that failed alone."""
        ...


COMPUTE_BACKENDS: Registry[type] = Registry("compute backend")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@COMPUTE_BACKENDS.register("in_process")
class InProcessCompute:
    """Shards one after another in this process; the model is loaded on the first shard."""

    name = "in_process"

    def map_shards(self, factory: ModelFactory, work: Work, shards: Iterable[list], on_result: OnResult,
                   describe: Callable[[Any], str] = repr) -> list[ItemFailure]:
        model, failures = None, []
        for index, items in enumerate(shards):
            if model is None:
                model = factory()
            try:
                results = work(model, list(items))
            except Exception as exc:  # a bad input: find it; the rest of the shard still completes
                if len(items) == 1:
                    failures.append(ItemFailure(index, describe(items[0]), _error_text(exc)))
                else:
                    for item in items:
                        try:
                            result = work(model, [item])
                        except Exception as item_exc:
                            failures.append(ItemFailure(index, describe(item), _error_text(item_exc)))
                            continue
                        on_result(index, [item], result)
            else:  # outside the try: a failure to persist is not a bad input
                on_result(index, list(items), results)
        return failures


class _ModelActor:
    """A Ray actor: one model, loaded on its first shard, kept for every later one."""

    def __init__(self, factory: ModelFactory, threads: int | None) -> None:
        self.factory, self.model = factory, None
        if threads:  # the same intra-op thread count as the driver: same float reductions
            import torch

            torch.set_num_threads(threads)

    def run(self, work: Work, items: list) -> list:
        if self.model is None:
            self.model = self.factory()
        return work(self.model, items)

    def pid(self) -> int:
        return os.getpid()


def local_ray_environment() -> None:
    """Before `import ray`: a runtime started here listens on 127.0.0.1 only (Ray reads this at
    import; without it a local node binds every interface)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect_ray(address: str) -> Any:
    """The `ray` module, connected: `local` starts a runtime in this process, anything else
    (`auto`, `ray://head:10001`, `host:port`) joins that cluster. A process already connected
    (a test's runtime, a Ray job) is reused."""
    if address == "local":
        local_ray_environment()
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False if address == "local" else None,
                 log_to_driver=False, configure_logging=False)
    return ray


@COMPUTE_BACKENDS.register("ray")
@dataclass
class RayCompute:
    """Shards spread over Ray actors, one model per actor.

    ``workers``: actors (default: one per GPU of the cluster, else 1). ``gpus_per_worker``:
    default 1 when the cluster has GPUs, else 0. ``gpu_resource``: the resource name actors
    request ("GPU"; tests declare a fake one). ``max_retries``: restarts of a killed actor and
    retries of its shard. ``threads``: torch intra-op threads in each actor (default: the
    driver's count, so CPU results match in-process ones bit for bit).
    """

    address: str = "auto"
    workers: int | None = None
    gpus_per_worker: float | None = None
    gpu_resource: str = "GPU"
    max_retries: int = 3
    threads: int | None = None
    name: str = field(default="ray", init=False)

    def _actors(self, ray: Any, factory: ModelFactory, shard_count: int | None) -> list:
        gpus = float(ray.cluster_resources().get(self.gpu_resource, 0))
        per_worker = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        count = self.workers or (int(gpus // per_worker) if per_worker else 1)
        count = max(1, min(count, shard_count) if shard_count else count)
        if self.threads is None:
            import torch

            threads = torch.get_num_threads()
        else:
            threads = self.threads
        options: dict[str, Any] = {"max_restarts": self.max_retries, "max_task_retries": self.max_retries}
        if per_worker:
            if self.gpu_resource == "GPU":
                options["num_gpus"] = per_worker
            else:
                options["resources"] = {self.gpu_resource: per_worker}
        actor_class = ray.remote(_ModelActor).options(**options)
        return [actor_class.remote(factory, threads) for _ in range(count)]

    def map_shards(self, factory: ModelFactory, work: Work, shards: Iterable[list], on_result: OnResult,
                   describe: Callable[[Any], str] = repr) -> list[ItemFailure]:
        upcoming = iter(enumerate(shards))  # read lazily: a shard's images are loaded when it is sent
        first = next(upcoming, None)
        if first is None:  # nothing missing: no connection, no actor
            return []
        upcoming = itertools.chain([first], upcoming)
        ray = connect_ray(self.address)
        from ray.exceptions import RayTaskError

        isolated: deque[tuple[int, list]] = deque()  # single items of a shard that raised
        # no actor (a process, a model load) for which there is no shard
        actors = self._actors(ray, factory, len(shards) if isinstance(shards, Sized) else None)
        work_ref = ray.put(work)  # shipped once, not with every shard
        # Two shards in flight per actor: the next one is queued on the worker while this one runs.
        slots = [actor for actor in actors for _ in range(2)]
        running: dict[Any, tuple[Any, int, list, bool]] = {}
        failures: list[ItemFailure] = []
        try:
            while True:
                while slots:
                    if isolated:
                        (index, items), alone = isolated.popleft(), True
                    else:
                        nxt = next(upcoming, None)
                        if nxt is None:
                            break
                        (index, items), alone = (nxt[0], list(nxt[1])), False
                    actor = slots.pop()
                    running[actor.run.remote(work_ref, items)] = (actor, index, items, alone)
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                actor, index, items, alone = running.pop(ready[0])
                slots.append(actor)
                try:
                    results = ray.get(ready[0])
                except RayTaskError as exc:  # the work raised (a bad input); a lost worker is retried by Ray
                    cause = exc.cause if exc.cause is not None else exc  # the work's own exception
                    if alone or len(items) == 1:
                        failures.append(ItemFailure(index, describe(items[0]), _error_text(cause)))
                    else:
                        isolated.extend((index, [item]) for item in items)
                    continue
                on_result(index, items, results)
        finally:
            for actor in actors:
                ray.kill(actor)
        return failures


def make_compute(backend: str = "in_process", **options: Any) -> Compute:
    """A compute backend by registry name (`in_process`, `ray`) with its options."""
    return COMPUTE_BACKENDS.get(backend)(**options)


def raise_failures(failures: Sequence[ItemFailure], what: str) -> None:
    """After every other shard is done and persisted: one error naming each failed item."""
    if failures:
        listed = "; ".join(f"{f.item}: {f.error}" for f in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise RuntimeError(f"{what}: {len(failures)} item(s) failed, everything else was built and kept; "
                           f"rerun after fixing them: {listed}{more}")
