"""The `eliq` command: era management, materialization and the score report."""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

from eliq_pipeline.core.eras import ErasFileError, append_era, eras_variables, load_eras
from eliq_pipeline.score_cli import register as register_scoring


def default_eras_path() -> Path:
    """The era registry file: $ELIQ_ERAS, else eras.yaml in the working directory."""
    return Path(os.environ.get("ELIQ_ERAS", "eras.yaml"))


# ELIQ_* settings that name files or folders: written absolute, so the line works from the repo root.
_PATH_SETTINGS = ("ELIQ_HOME", "ELIQ_ERAS", "ELIQ_DATASETS", "ELIQ_PROMPTS_FILE", "ELIQ_NIQE_PARAMS", "ELIQ_SUPAGRUEN")
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


def ui_command(env: Mapping[str, str] | None = None) -> str:
    """The `make ui` line that opens the Dagster UI on this run's instance with its settings: every
    ELIQ_* variable of ``env`` (the code location reads them; `make cpu-demo` sets its own home, profile
    and era file), ELIQ_HOME left out at its default. Secrets are named, never printed."""
    from eliq_pipeline.definitions import eliq_home

    env = os.environ if env is None else env
    settings, secrets = [], []
    for name in sorted(key for key in env if key.startswith("ELIQ_")):
        value = env[name]
        if any(word in name for word in _SECRET_WORDS):
            secrets.append(name)
            continue
        if name in _PATH_SETTINGS:
            value = str(Path(value).resolve())
            if name == "ELIQ_HOME" and value == str(eliq_home({})):  # the default home
                continue
        settings.append(f"{name}={shlex.quote(value)}")
    line = " ".join([*settings, "make ui"])
    return line + (f"   # with {', '.join(secrets)} set as for this run" if secrets else "")


def _eras_list(args: argparse.Namespace) -> int:
    registry = load_eras(args.eras, eras_variables())
    profile = os.environ.get("ELIQ_PROFILE", "tiny")
    names = [era.name for era in registry.eras]
    status = era_status(names)
    rows = [(era.name, str(era.seed), ",".join(era.positive_generators), ",".join(era.low_quality_generators) or "-",
             era.editor_for(profile), status.get(era.name, "-") if status else "- (no Dagster instance)")
            for era in registry.eras]
    header = ("era", "seed", "positive generators", "low-quality", "editor", "status")
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def instance_dir() -> Path | None:
    """The Dagster instance `eliq` commands read: $DAGSTER_HOME, else `$ELIQ_HOME/dagster` (where
    `make demo` keeps it) when it holds one; None when there is none."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    from eliq_pipeline.definitions import eliq_home

    candidate = eliq_home() / "dagster"
    return candidate if (candidate / "dagster.yaml").is_file() else None


def era_status(era_names: Sequence[str], instance=None) -> dict[str, str] | None:
    """Per era, what the Dagster instance knows: not registered; running; failed / canceled (the
    latest run of its partition); built, partial or not built, with how many of the assets are
    materialized and which are missing. None when there is no instance."""
    import dagster as dg

    from eliq_pipeline.definitions import ELIQ_ASSETS
    from eliq_pipeline.defs.partitions import ERA_PARTITIONS
    from eliq_pipeline.runner import IN_FLIGHT_STATUS

    if instance is None:
        home = instance_dir()
        if home is None:
            return None
        with dg.DagsterInstance.from_config(str(home)) as opened:
            return era_status(era_names, opened)
    registered = set(instance.get_dynamic_partitions(ERA_PARTITIONS.name))
    keys = [asset.key for asset in ELIQ_ASSETS]
    out: dict[str, str] = {}
    for name in era_names:
        if name not in registered:
            out[name] = "not registered"
            continue
        built = [key for key in keys if instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[name]), limit=1).records]
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": name}), limit=1)
        last = runs[0] if runs else None
        if last is not None and last.status in IN_FLIGHT_STATUS:
            state = f"{IN_FLIGHT_STATUS[last.status]} (run {last.run_id[:8]})"
        elif last is not None and last.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            state = f"{last.status.value.lower()} (run {last.run_id[:8]})"
        else:
            state = "built" if len(built) == len(keys) else "partial" if built else "not built"
        missing = [key.to_user_string() for key in keys if key not in built]
        detail = f"{len(built)}/{len(keys)} assets"
        if built and missing:
            detail += f"; missing {', '.join(missing)}"
        out[name] = f"{state}, {detail}"
    return out


def _eras_add(args: argparse.Namespace) -> int:
    positives = [g.strip() for g in args.positive_generators.split(",") if g.strip()] if args.positive_generators else None
    era = append_era(args.eras, args.name, like=args.like, positive_generators=positives,
                     profile=os.environ.get("ELIQ_PROFILE", "tiny"),
                     s3_endpoint=os.environ.get("ELIQ_S3_ENDPOINT") or None, variables=eras_variables())
    print(f"added era {era.name} to {args.eras}: positives {', '.join(era.positive_generators)}, "
          f"low-quality {', '.join(era.low_quality_generators) or '-'}, seed {era.seed}")
    return 0


RESUME_HINT = "run `eliq materialize` (or `make demo`) again to resume from what is finished"


def _materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from eliq_pipeline.definitions import eliq_home
    from eliq_pipeline.run_guard import MaterializeBusy
    from eliq_pipeline.runner import MaterializeInterrupted, materialize_eras

    if args.eras:
        os.environ["ELIQ_ERAS"] = str(args.eras)
    load_eras(args.eras or default_eras_path(), eras_variables())  # validate before starting the instance
    # SIGTERM stops like Ctrl-C: Dagster turns either into a failed run while one is executing,
    # and between runs it is a KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with dg.DagsterInstance.get() as instance:
            runs = materialize_eras(args.era or None, force=args.force, instance=instance, wait=args.wait,
                                    verbose=args.verbose)
    except MaterializeBusy as exc:
        print(f"eliq: {exc}", file=sys.stderr)
        return 3
    except MaterializeInterrupted as exc:
        print(f"eliq: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"eliq: stopped; {RESUME_HINT}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    home = eliq_home()
    print(f"\nResults under {home}: artifacts in {home / 'artifacts'}, scores in {home / 'warehouse.duckdb'}")
    print(f"Browse runs, lineage and metadata with: {ui_command()}\n")
    _print_report(None, "markdown", sys.stdout)
    return 0 if all(run.status != "failed" for run in runs) else 1


def _print_report(era: str | None, fmt: str, out) -> None:
    """CSV: the rows of the scores table (long format, for machines). Markdown: per era, held-out
    tuple accuracy against chance and one compact table per benchmark (evaluation.report)."""
    from eliq_pipeline.definitions import resources_from_env
    from eliq_pipeline.defs.resources.warehouse import SCORES_COLUMNS
    from eliq_pipeline.evaluation.report import report_markdown

    resources = resources_from_env()
    rows = resources["warehouse"].scores(era)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=SCORES_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return
    out.write(report_markdown(rows, resources["profile"].profile, resources["warehouse"].dropped_images(era)))


def _supervision(args: argparse.Namespace) -> int:
    """Counts per family x aspect x method of an era's negatives (and its tuples), from the store."""
    import json

    from eliq_pipeline.definitions import load_era_value
    from eliq_pipeline.supervision.tuples import count_by

    negatives = load_era_value("negative_images", args.era).to_pylist()
    try:
        tuples = load_era_value("comparison_tuples", args.era).to_pylist()
    except FileNotFoundError:  # negatives built, tuples not yet
        tuples = []
    counts = count_by(negatives, "family", "aspect", "method")
    if args.format == "json":
        print(json.dumps({"era": args.era, "negatives": counts, "tuples": count_by(tuples, "split")}, indent=2))
        return 0
    print(f"era {args.era}: {len(negatives)} negatives, {len(tuples)} tuples {count_by(tuples, 'split')}")
    print(f"{'family':<14} {'aspect':<7} {'method':<24} {'count':>6}")
    for key_, count in counts.items():
        family, aspect, method = key_.split("/")
        print(f"{family:<14} {aspect:<7} {method:<24} {count:>6}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            _print_report(args.era, args.format, handle)
        print(f"wrote {args.out}")
    else:
        _print_report(args.era, args.format, sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eliq", description="ELIQ label-free image quality critic pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    eras = commands.add_parser("eras", help="list or add generator eras").add_subparsers(dest="eras_command", required=True)
    listing = eras.add_parser("list", help="show the eras of the registry file")
    listing.add_argument("--eras", type=Path, default=default_eras_path(), help="era registry file (default: eras.yaml)")
    listing.set_defaults(func=_eras_list)
    add = eras.add_parser("add", help="append an era modelled on an existing one")
    add.add_argument("name")
    add.add_argument("--like", required=True, help="copy generators, editor from this era")
    add.add_argument("--positive-generators", help="comma-separated generator ids for positives")
    add.add_argument("--eras", type=Path, default=default_eras_path())
    add.set_defaults(func=_eras_add)

    materialize = commands.add_parser("materialize", help="materialize every asset for the eras (skips up-to-date eras)")
    materialize.add_argument("--era", action="append", help="only this era (repeatable)")
    materialize.add_argument("--force", action="store_true", help="re-materialize even if up to date")
    materialize.add_argument("--eras", type=Path, default=None, help="era registry file (default: $ELIQ_ERAS or eras.yaml)")
    materialize.add_argument("--wait", action="store_true",
                             help="if another eliq materialize holds $ELIQ_HOME, wait for it instead of refusing")
    materialize.add_argument("-v", "--verbose", action="store_true",
                             help="print every Dagster event and step log line (and the libraries' own output)")
    materialize.set_defaults(func=_materialize)

    supervision = commands.add_parser("supervision", help="what an era's supervision is made of")
    supervision.add_argument("--era", required=True)
    supervision.add_argument("--format", choices=("table", "json"), default="table")
    supervision.set_defaults(func=_supervision)

    register_scoring(commands)  # eliq score, eliq export

    report = commands.add_parser("report", help="print the benchmark scores of every era")
    report.add_argument("--era")
    report.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    report.add_argument("--out", help="write to this file instead of stdout")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ErasFileError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"eliq: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
