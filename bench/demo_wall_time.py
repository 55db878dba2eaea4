"""`make demo` wall time before and after a change, on this machine, in one run.

    .venv/bin/python bench/demo_wall_time.py --before aab3e8d          # that commit vs this tree
    .venv/bin/python bench/demo_wall_time.py --before aab3e8d --rounds 2

Each side runs what `make demo` runs -- `eliq materialize` on the embedded tiny profile with a
fresh ELIQ_HOME and DAGSTER_HOME -- with this checkout's virtualenv (so both sides use the same
libraries). The `before` side imports the package from a temporary `git worktree` of that
revision (PYTHONPATH comes before the editable install); the `after` side is this working tree.
Sides alternate (before, after, before, ...) so machine drift hits both. Prints each wall time
and the ratio of the medians, and the
seconds of each asset step (from the Dagster instance) of the first round. Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _demo(tree: Path, home: Path, log: Path, extra_env: dict[str, str] | None = None) -> float:
    """Wall seconds of `eliq materialize` in ``tree`` with a fresh home (as `make demo`), plus
    ``extra_env`` (e.g. ELIQ_RAY_ADDRESS)."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    config = (tree / "dagster.yaml").read_text()
    (dagster_home / "dagster.yaml").write_text(
        config.replace("base_dir: .eliq/dagster/storage", f"base_dir: {dagster_home / 'storage'}"))
    env = {**os.environ, "ELIQ_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(tree)}
    env.pop("ELIQ_DATASETS", None)  # the README's plain `make demo`
    env.update(extra_env or {})
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([str(REPO / ".venv" / "bin" / "eliq"), "materialize"], cwd=tree, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"`eliq materialize` failed in {tree} (exit {code}); see {log}")
    return seconds


def _step_seconds(dagster_home: Path) -> dict[str, float]:
    """Seconds per asset step over all runs of a demo home, from its Dagster instance."""
    from dagster import DagsterInstance

    seconds: dict[str, float] = {}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs():
            for stat in instance.get_run_step_stats(run.run_id):
                if stat.start_time and stat.end_time:
                    seconds[stat.step_key] = seconds.get(stat.step_key, 0.0) + stat.end_time - stat.start_time
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the 'before' side")
    parser.add_argument("--rounds", type=int, default=1, help="demo runs per side (alternating)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    options = parser.parse_args(argv)
    if not (REPO / ".venv" / "bin" / "eliq").exists():
        raise SystemExit("run `make setup` first (this script uses the checkout's .venv)")

    tmp = Path(tempfile.mkdtemp(prefix="eliq-demo-bench-"))
    before_tree = tmp / "before"
    subprocess.check_call(["git", "worktree", "add", "--detach", str(before_tree), options.before], cwd=REPO,
                          stdout=subprocess.DEVNULL)
    times: dict[str, list[float]] = {"before": [], "after": []}
    steps: dict[str, dict[str, float]] = {}
    try:
        for round_ in range(options.rounds):
            for side, tree in (("before", before_tree), ("after", REPO)):
                home = tmp / f"{side}-{round_}"
                seconds = _demo(tree, home, tmp / f"{side}-{round_}.log")
                times[side].append(seconds)
                if round_ == 0:
                    steps[side] = _step_seconds(home / "dagster")
                print(f"{side:6} round {round_ + 1}: {seconds:7.1f} s", flush=True)
                if not options.keep:
                    shutil.rmtree(home, ignore_errors=True)
    finally:
        subprocess.call(["git", "worktree", "remove", "--force", str(before_tree)], cwd=REPO)
        if not options.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'asset step (round 1)':34} {'before s':>9} {'after s':>9}")
    for key in sorted(set(steps["before"]) | set(steps["after"])):
        print(f"{key:34} {steps['before'].get(key, float('nan')):9.1f} {steps['after'].get(key, float('nan')):9.1f}")
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"make demo (eliq materialize, tiny profile): before {options.before} {before:.1f} s, "
          f"after (this tree) {after:.1f} s, ratio before/after {before / after:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
