"""GPU batch work in-process vs on a local Ray runtime with 2 workers, on this machine, in one run.

    .venv/bin/python bench/ray_compute.py
    .venv/bin/python bench/ray_compute.py --shards 400     # more shards for the overhead figure

1. The tiny era of `make demo` (`eliq materialize`, embedded tiny profile, fresh homes) twice:
   in-process, then with ELIQ_RAY_ADDRESS=local ELIQ_RAY_WORKERS=2 (a Ray runtime started by the
   run, two actors per model). Wall time of the three asset steps that Ray runs (positive_images,
   negative_images, aspect_embeddings; from the Dagster instance) and their ratio. The other
   steps (SFT, QQT, benchmarks) run in-process on both sides and are printed for reference.
2. Ray's overhead per shard: no-op work over --shards one-item shards on 2 actors vs in-process,
   after the actors are up (actor start-up is printed separately).

On a CPU-only box with 2 cores, two actors share the cores the in-process run already uses, so
the ratio shows the cost of distribution, not its gain; the gain comes with one GPU per actor.
Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_wall_time import REPO, _demo, _step_seconds  # noqa: E402

RAY_STEPS = ("positive_images", "negative_images", "aspect_embeddings")


def _noop_model() -> None:
    return None


def _noop(_model: None, items: list) -> list:
    return items


def shard_overhead(shards: int) -> tuple[float, float, float]:
    """(actor start-up s, in-process s, Ray s) for `shards` one-item no-op shards on 2 actors."""
    from eliq_pipeline.core.compute import InProcessCompute, RayCompute, connect_ray

    connect_ray("local")
    items = [[k] for k in range(shards)]
    start = time.perf_counter()
    RayCompute(address="local", workers=2).map_shards(_noop_model, _noop, items[:2], lambda *_: None)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    InProcessCompute().map_shards(_noop_model, _noop, items, lambda *_: None)
    local = time.perf_counter() - start
    start = time.perf_counter()
    RayCompute(address="local", workers=2).map_shards(_noop_model, _noop, items, lambda *_: None)
    remote = time.perf_counter() - start
    return startup, local, remote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=200, help="no-op shards for the overhead figure")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    options = parser.parse_args(argv)
    if not (REPO / ".venv" / "bin" / "eliq").exists():
        raise SystemExit("run `make setup` first (this script uses the checkout's .venv)")
    tmp = Path(tempfile.mkdtemp(prefix="eliq-ray-bench-"))
    sides = {"in-process": {}, "ray (2 workers)": {"ELIQ_RAY_ADDRESS": "local", "ELIQ_RAY_WORKERS": "2"}}
    walls, steps = {}, {}
    try:
        for side, extra in sides.items():
            home = tmp / side.split()[0]
            walls[side] = _demo(REPO, home, tmp / f"{side.split()[0]}.log", extra)
            steps[side] = _step_seconds(home / "dagster")
            print(f"{side:16} eliq materialize: {walls[side]:7.1f} s", flush=True)
    finally:
        if not options.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    local_side, ray_side = sides
    print(f"\n{'asset step':28} {local_side + ' s':>14} {ray_side + ' s':>18}")
    for key in sorted(set(steps[local_side]) | set(steps[ray_side])):
        mark = " *" if key in RAY_STEPS else ""
        print(f"{key + mark:28} {steps[local_side].get(key, float('nan')):14.1f} {steps[ray_side].get(key, float('nan')):18.1f}")
    local = sum(steps[local_side].get(k, 0.0) for k in RAY_STEPS)
    remote = sum(steps[ray_side].get(k, 0.0) for k in RAY_STEPS)
    print(f"* steps Ray runs: in-process {local:.1f} s, ray {remote:.1f} s, ratio in-process/ray {local / remote:.2f}x")
    startup, noop_local, noop_ray = shard_overhead(options.shards)
    print(f"Ray overhead: actor start-up (2 actors, first 2 shards) {startup:.2f} s; {options.shards} no-op shards "
          f"in-process {noop_local * 1000:.1f} ms, ray {noop_ray * 1000:.1f} ms: "
          f"{(noop_ray - noop_local) / options.shards * 1000:.2f} ms per shard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
