"""README's examples run as written, with any ELIQ_HOME.

The commands and Python snippets are parsed from README.md itself, so the two cannot drift: every
`.venv/bin/eliq …` line of a fenced bash block (continuation lines joined) is run through bash from
the repository root, and every fenced python block through this interpreter, in README order,
against a temporary ELIQ_HOME holding one materialized tiny era named as README names it. Only what
cannot exist here is substituted (SUBSTITUTIONS: an S3 bucket becomes a moto one, a Ray cluster a
local runtime, CUDA the CPU); every other command line must be in NOT_RUN, which says why. A new
`eliq` line is run; a new line of any other program fails the test until it is classified here.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ELIQ_COMMAND = ".venv/bin/eliq "
# An `eliq` command line, after any leading VAR=value assignments: run, never skipped.
ELIQ_LINE = re.compile(r"^(\w+=\S*\s+)*(\S*/)?eliq\s")

# Command lines README shows but this test does not run: (pattern on the whole command, why).
NOT_RUN: tuple[tuple[str, str], ...] = (
    (r"^(ELIQ_\w+=\S+ )*make (demo|test|ui|cpu-demo)\b",
     "make targets: CI runs `make test` and `make test-slow` itself (this test is a slow one), and `make demo` "
     "is the era build this test does in-process (runner.materialize_eras); cpu-demo trains on a real dataset for 20 minutes"),
    (r"^(docker|kubectl|helm) ",
     "cluster deployment (a registry, a Kubernetes cluster): deploy/ is checked by test_deploy.py"),
    (r"^\.venv/bin/python bench/",
     "benchmarks: minutes of measurement that print ratios, not pass/fail"),
)

# Rewrites of README command lines that name what cannot exist here: (pattern, replacement, why).
# `{bucket}` is the moto bucket the test fills with the era's positives under images/.
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (r"s3://bucket/", "s3://{bucket}/", "README's placeholder bucket: a moto S3 bucket holding the era's positives"),
    (r"--ray ray://eliq-ray-head-svc:10001", "--ray local", "the cluster's Ray head: a local Ray runtime"),
    (r"--device cuda", "--device cpu", "no GPU in CI"),
)

ERAS = """
generators:
  flux: {backend: diffusers, model: "tiny:flux"}
  sd3: {backend: diffusers, model: "tiny:sd3"}
  sd15: {backend: diffusers, model: "tiny:sd"}
eras:
  - {name: era-2024, positive_generators: [flux], low_quality_generators: [sd15], seed: 1}
  - {name: era-2025, positive_generators: [flux, sd3], low_quality_generators: [sd15], seed: 2}
"""
BUILT_ERA = "era-2024"  # the era README's examples inspect, score and export


@dataclass(frozen=True)
class Example:
    """A README example: one bash command (continuations joined) or one whole python block."""

    language: str
    text: str
    line: int  # where it starts in README.md

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_examples(text: str) -> list[Example]:
    """Every command of a fenced ```bash block and every fenced ```python block, in order; bash
    comment lines and blank lines are dropped, trailing comments kept (bash ignores them)."""
    examples: list[Example] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\w+)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        language, start = fence.group(1), index + 1
        end = next((k for k in range(start, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{index + 1}: ```{language} block is never closed")
        body = lines[start:end]
        if language == "python":
            examples.append(Example("python", "\n".join(body) + "\n", start + 1))
        elif language == "bash":
            examples.extend(_bash_commands(body, start + 1))
        index = end + 1
    return examples


def _bash_commands(body: list[str], first_line: int) -> list[Example]:
    commands: list[Example] = []
    pending: list[str] = []
    pending_line = first_line
    for offset, raw in enumerate(body):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            pending_line = first_line + offset
        # A continuation ends in a backslash before any comment: `cmd \` (never `cmd  # a \`).
        if line.endswith("\\") and "#" not in line:
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        commands.append(Example("bash", " ".join(pending), pending_line))
        pending = []
    if pending:
        raise ValueError(f"README.md:{pending_line}: a command ends in a continuation backslash")
    return commands


def _not_run_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


def classify(examples: list[Example]) -> tuple[list[Example], list[Example], list[Example]]:
    """(to run, not run by NOT_RUN, unclassified) of README's examples."""
    run, skipped, unknown = [], [], []
    for example in examples:
        if example.language == "python" or ELIQ_LINE.match(example.text):
            run.append(example)
        elif _not_run_reason(example.text):
            skipped.append(example)
        else:
            unknown.append(example)
    return run, skipped, unknown


def substitute(command: str, **values: str) -> tuple[str, set[str]]:
    """The command with SUBSTITUTIONS applied, and the patterns that applied."""
    used = set()
    for pattern, replacement, _ in SUBSTITUTIONS:
        if re.search(pattern, command):
            command = re.sub(pattern, replacement.format(**values), command)
            used.add(pattern)
    return command, used


# ------------------------------------------------------------------------------ fast: README is classified


def test_every_readme_command_is_run_or_has_a_reason_not_to_be() -> None:
    examples = readme_examples(README.read_text(encoding="utf-8"))
    run, skipped, unknown = classify(examples)
    assert not unknown, ("README command lines that are neither `.venv/bin/eliq …` (run by this test) nor in "
                         "NOT_RUN with a reason:\n" + "\n".join(map(str, unknown)))
    assert not [e for e in skipped if ELIQ_LINE.match(e.text)], "an eliq command must run, not be skipped"
    for pattern, why in NOT_RUN:  # a stale entry would hide the next command it happens to match
        assert any(re.search(pattern, e.text) for e in skipped), f"NOT_RUN entry {pattern!r} ({why}) matches no README line"
    for pattern, _, why in SUBSTITUTIONS:
        assert any(re.search(pattern, e.text) for e in run), f"substitution {pattern!r} ({why}) matches no README command"
    assert sum(e.language == "python" for e in run) >= 2 and sum(e.language == "bash" for e in run) >= 8


def test_the_parser_joins_continuations_and_keeps_order() -> None:
    text = ("intro\n```bash\n# a comment\n.venv/bin/eliq a \\\n    --b c   # d\n\nmake demo\n```\n"
            "```python\nprint(1)\n```\n```yaml\nkey: 1\n```\n")
    assert readme_examples(text) == [Example("bash", ".venv/bin/eliq a --b c   # d", 4),
                                     Example("bash", "make demo", 7), Example("python", "print(1)\n", 10)]
    with pytest.raises(ValueError, match="README.md:2: ```bash block is never closed"):
        readme_examples("x\n```bash\nmake demo\n")


# ------------------------------------------------------------------------------ slow part: run them


@pytest.fixture(scope="module")
def readme_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A temporary ELIQ_HOME as `make demo` leaves it for README's era-2024 (Dagster instance in
    $ELIQ_HOME/dagster, the era materialized on the tiny profile with the tests' FAST overrides);
    era-2025 is in the registry, not built. Its environment."""
    import dagster as dg

    from eliq_pipeline.runner import materialize_eras

    root = tmp_path_factory.mktemp("readme")
    home = root / "eliq home"  # a space: README's paths must be quoted
    env = pipeline_env(home, write_eras(root / "eras.yaml", ERAS), ELIQ_DATASETS="")
    instance_dir = home / "dagster"
    instance_dir.mkdir(parents=True)
    (instance_dir / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text().replace(
        "base_dir: .eliq/dagster/storage", f"base_dir: {instance_dir / 'storage'}"))
    with dg.DagsterInstance.from_config(str(instance_dir)) as instance:
        runs = materialize_eras([BUILT_ERA], instance=instance, env=env, log=lambda _: None)
    assert [(r.era, r.status) for r in runs] == [(BUILT_ERA, "materialized")], runs
    return env


def _upload_positives(env: dict[str, str], endpoint: str, bucket: str) -> int:
    import boto3

    from eliq_pipeline.score_cli import era_positives
    from eliq_pipeline.supervision.image_cache import image_key
    from eliq_pipeline.definitions import resources_from_env

    store = resources_from_env(env)["artifacts"].store()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    positives = era_positives(BUILT_ERA, env)
    for positive in positives:
        client.put_object(Bucket=bucket, Key=f"images/{positive.name}", Body=store.get_bytes(image_key(positive.image_sha256)))
    return len(positives)


def _run(example: Example, env: dict[str, str], bucket: str, used: set[str]) -> subprocess.CompletedProcess:
    if example.language == "python":
        argv = [sys.executable, "-c", example.text]
    else:
        command, applied = substitute(example.text, bucket=bucket)
        used |= applied
        argv = ["bash", "-c", "set -eo pipefail\n" + command]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{example}\nexited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
                                  f"--- stderr\n{done.stderr[-5000:]}")
    return done


@pytest.mark.slow  # each `eliq` process takes 10-20 s to start on a busy 2-core box: ~4 minutes beyond the era build
def test_readme_commands_and_snippets_run_as_written(readme_home: dict[str, str], s3_endpoint: str, s3_bucket: str,
                                                    tmp_path: Path) -> None:
    home = Path(readme_home["ELIQ_HOME"])
    eras_file = tmp_path / "eras.yaml"  # `eliq eras add` edits it: each run starts from the same registry
    shutil.copy(readme_home["ELIQ_ERAS"], eras_file)
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}  # found under $ELIQ_HOME
    env.update(readme_home, ELIQ_ERAS=str(eras_file), ELIQ_S3_ENDPOINT=s3_endpoint)
    positives = _upload_positives(readme_home, s3_endpoint, s3_bucket)
    assert positives > 0

    run, _, unknown = classify(readme_examples(README.read_text(encoding="utf-8")))
    assert not unknown, "see test_every_readme_command_is_run_or_has_a_reason_not_to_be"
    used: set[str] = set()
    outputs = {example: _run(example, env, s3_bucket, used) for example in run}
    assert used == {pattern for pattern, _, _ in SUBSTITUTIONS}

    # What README says the commands leave, under this ELIQ_HOME and nowhere else.
    exported = [done.stdout for example, done in outputs.items() if example.text.startswith(f"{ELIQ_COMMAND}export")
                and "--out" in example.text]
    backbone = home / "models" / "tiny-qwen3-vl-0"
    assert exported and all(f"built at {backbone}" in text for text in exported), exported
    assert "--base <folder" not in "".join(exported)
    with (home / "scores.csv").open(newline="") as handle:
        era_rows = list(csv.DictReader(handle))
    assert len(era_rows) == positives and all(r["prompt"] and r["s_ali"] and not r["error"] for r in era_rows)
    with (home / "positives-era-2024" / "images.csv").open(newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert sorted(r["image"] for r in listed) == sorted(r["image"] for r in era_rows)
    assert all((home / "positives-era-2024" / r["image"]).is_file() for r in listed)
    with (home / "scores-from-files.csv").open(newline="") as handle:
        file_rows = list(csv.DictReader(handle))
    assert sorted((r["image"], r["prompt"]) for r in file_rows) == sorted((r["image"], r["prompt"]) for r in era_rows)
    assert not any(r["error"] for r in file_rows)
    assert (home / "scores.parquet").is_file() and (home / "report.csv").is_file()
    snippet = next(done.stdout for example, done in outputs.items() if "ELIQScorer" in example.text)
    assert re.search(r"s_vis -?\d+\.\d{3}  s_ali -?\d+\.\d{3}", snippet), snippet
