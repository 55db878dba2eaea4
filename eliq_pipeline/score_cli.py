"""`eliq score` (score images with an exported critic bundle) and `eliq export` (bundle an era).

Over 400 lines: an entry point (two commands, their resumable output and locking), kept with its argument parser.

`eliq score` is built for long unattended runs: one unreadable image becomes an error row instead
of stopping the run, the output file is rewritten atomically after every chunk, and a rerun keeps
the rows already scored (by image + prompt) and scores only the rest. Inputs are a folder, a CSV,
an ``s3://bucket/prefix`` or a materialized era's positives with their prompts (``--era``, read
from the artifact store); with ``--ray ADDRESS`` the images are scored by a pool of scorers on a
Ray cluster (eliq_pipeline.ray_scoring) into the same resumable output. `eliq export` writes an
era's bundle and/or its positives as files with an `eliq score`-ready CSV (``--images``).

Runs sharing an --out take turns: each holds an exclusive lock (flock on ``<out>.lock``) for its
whole run, so a second run waits, then reads what the first wrote and adds its own rows; no row
is lost. The kernel drops the lock of a killed run, so there are no stale locks to clear.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eliq_pipeline.core.atomic import staged_file
from eliq_pipeline.core.locks import exclusive_lock

# prompt_truncated: the prompt was longer than the backbone takes and was cut to fit (its s_ali
# judges the kept start of the prompt); appended last so the older columns keep their places.
OUTPUT_COLUMNS: tuple[str, ...] = ("image", "prompt", "s_vis", "s_ali", "error", "prompt_truncated")
# Outputs written before prompt_truncated existed are still read (and resumed).
LEGACY_OUTPUT_COLUMNS: tuple[str, ...] = ("image", "prompt", "s_vis", "s_ali", "error")
LOCK_SUFFIX = ".lock"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
OUTPUT_SUFFIXES = (".csv", ".parquet")
S3_SCHEME = "s3://"
# The environment an S3 client is built from: what a client is cached by here, and what Ray workers
# are handed (ray_scoring) to read the objects the driver listed.
S3_ENVIRONMENT = ("ELIQ_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_DEFAULT_REGION", "AWS_REGION")


class Scorer(Protocol):
    """What `score_items` needs: ELIQScorer, or a test double."""

    def score(self, images: Sequence[Any], prompts: Sequence[str | None], batch_size: int = 8) -> list[tuple[float, float | None]]: ...
    # A result may carry ``prompt_truncated`` (ELIQScorer's Score does); plain pairs count as False.


class ScorerUnavailable(ValueError):
    """The scorer could not be set up (bad bundle, missing --base): fatal for the whole run,
    never an error row. A ValueError, so `eliq` prints it as a one-line error."""


@dataclass(frozen=True)
class ScoreItem:
    """One row to score: ``image`` as written to the output, ``path`` what is actually read: a
    local file, or an ``s3://bucket/key`` URI (a string: Path would fold its ``//``)."""

    image: str
    path: Path | str | None
    prompt: str | None

    @property
    def key(self) -> tuple[str, str]:
        return _row_key(self.image, self.prompt)


@dataclass(frozen=True)
class ScoreSummary:
    scored: int  # rows scored in this run (errors included)
    errors: int  # rows of this run with an error
    kept: int  # rows kept from an earlier run
    total: int  # rows now in the output file
    truncated: int = 0  # rows of this run whose prompt was cut to the backbone's limit


def _row_key(image: str, prompt: str | None) -> tuple[str, str]:
    # Blank and missing prompts are the same input (both get s_vis only).
    return image, (prompt or "").strip()


def _clean_prompt(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


# ------------------------------------------------------------------------------ inputs


def _is_image_name(relative: str) -> bool:
    parts = relative.split("/")
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in parts)


def read_inputs(source: Path | str, image_column: str = "image", prompt_column: str = "prompt") -> list[ScoreItem]:
    """Rows to score from a folder of images (no prompts), an S3 prefix of images (no prompts) or
    a CSV, in order, duplicates dropped.

    Folder: every image file below it (hidden files skipped), named by relative path. S3
    (``s3://bucket/prefix``, endpoint from ELIQ_S3_ENDPOINT, credentials from the usual AWS
    variables): every image object below the prefix, named by its ``s3://`` URI. CSV:
    ``image_column`` is required, ``prompt_column`` optional; relative image paths resolve
    against the CSV's folder and are written to the output as given; ``s3://`` URIs are read from S3.
    """
    if str(source).startswith(S3_SCHEME):
        items = _read_s3_inputs(str(source))
    elif (local := Path(source)).is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file() and _is_image_name(p.relative_to(local).as_posix()))
        items = [ScoreItem(p.relative_to(local).as_posix(), p, None) for p in files]
    elif local.is_file() and local.suffix.lower() == ".csv":
        items = _read_csv_inputs(local, image_column, prompt_column)
    elif not local.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    else:
        raise ValueError(f"input {source} must be a folder of images, an s3://bucket/prefix or a .csv file")
    unique: dict[tuple[str, str], ScoreItem] = {}
    for item in items:
        unique.setdefault(item.key, item)
    return list(unique.values())


def _read_csv_inputs(path: Path, image_column: str, prompt_column: str) -> list[ScoreItem]:
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if image_column not in columns:
            raise ValueError(
                f"{path} has no {image_column!r} column (columns: {', '.join(columns) or 'none'}); "
                "it needs one image path per row"
            )
        rows = list(reader)
    items = []
    for row in rows:
        value = (row.get(image_column) or "").strip()
        resolved: Path | str | None = None
        if value.startswith(S3_SCHEME):
            resolved = value
        elif value:
            resolved = path.parent / Path(value).expanduser()
        items.append(ScoreItem(value, resolved, _clean_prompt(row.get(prompt_column))))
    return items


def _split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{uri} names no bucket (expected s3://bucket/prefix)")
    return bucket, key


_S3_CLIENTS: dict[tuple[str | None, ...], Any] = {}


def _s3_client() -> Any:
    """A boto3 S3 client on ELIQ_S3_ENDPOINT (AWS's own when unset), one per process and setting."""
    settings = tuple(os.environ.get(name) for name in S3_ENVIRONMENT)
    if settings not in _S3_CLIENTS:
        import boto3
        from botocore.config import Config

        # Long runs meet throttling and dropped connections: let botocore retry them.
        config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"})
        _S3_CLIENTS[settings] = boto3.client("s3", endpoint_url=os.environ.get("ELIQ_S3_ENDPOINT") or None,
                                             config=config)
    return _S3_CLIENTS[settings]


def _read_s3_inputs(uri: str) -> list[ScoreItem]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split_s3_uri(uri)
    # A prefix is a folder: s3://b/imgs lists imgs/..., never imgs2/...
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = []
    try:
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(entry["Key"] for entry in page.get("Contents", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise FileNotFoundError(f"input {uri}: bucket {bucket} does not exist") from None
        raise ValueError(f"cannot list input {uri}: {exc}") from None
    except BotoCoreError as exc:
        raise ValueError(f"cannot list input {uri}: {exc}") from None
    if not keys:
        raise FileNotFoundError(f"input {uri} holds no objects")
    return [ScoreItem(f"{S3_SCHEME}{bucket}/{key}", f"{S3_SCHEME}{bucket}/{key}", None)
            for key in sorted(keys) if _is_image_name(key[len(prefix):])]


# ------------------------------------------------------------------------------ an era's positives


@dataclass(frozen=True)
class EraPositive:
    """One positive image of an era: ``name`` is how `eliq score --era` names its row and where
    `eliq export --images` writes it (``<generator>/<prompt_id>-<image_index>.png``); ``location``
    is where the artifact store keeps it (a local file or an ``s3://`` URI)."""

    name: str
    location: Path | str
    prompt: str
    generator: str
    prompt_id: str
    image_index: int
    image_sha256: str
    category: str


ERA_IMAGES_CSV = "images.csv"  # written by `eliq export --images`: one row per image, `eliq score --input`-ready
ERA_IMAGES_COLUMNS = ("image", "prompt", "generator", "prompt_id", "image_index", "image_sha256", "category")


def _artifact_store(env: dict[str, str] | None) -> Any:
    from eliq_pipeline.definitions import resources_from_env

    return resources_from_env(env)["artifacts"].store()


def era_positives(era: str, env: dict[str, str] | None = None) -> list[EraPositive]:
    """The positive images of a materialized era with their prompts, from its ``positive_images``
    table in the artifact store configured by ``env`` (the process environment when None): the
    images the critic was trained to rank highest. The images stay in the store (local or S3);
    the table names them by content hash."""
    from eliq_pipeline.definitions import load_era_value
    from eliq_pipeline.supervision.image_cache import image_key

    table = load_era_value("positive_images", era, env)  # FileNotFoundError says to materialize the era
    store = _artifact_store(env)
    positives: list[EraPositive] = []
    for number, row in enumerate(table.to_pylist(), start=1):
        missing = [c for c in ("prompt", "generator", "prompt_id", "image_index", "image_sha256") if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"positive_images of era {era!r}, row {number}: no {', '.join(missing)}; "
                             f"re-materialize it (eliq materialize --era {era})")
        location = store.describe(image_key(row["image_sha256"]))
        positives.append(EraPositive(
            name=f"{row['generator']}/{row['prompt_id']}-{int(row['image_index'])}.png",
            location=location if location.startswith(S3_SCHEME) else Path(location),
            prompt=row["prompt"], generator=row["generator"], prompt_id=row["prompt_id"],
            image_index=int(row["image_index"]), image_sha256=row["image_sha256"], category=row.get("category") or "",
        ))
    return positives


def read_era_inputs(era: str, env: dict[str, str] | None = None) -> list[ScoreItem]:
    """Rows to score for `eliq score --era`: the era's positives with their prompts, read where
    the store keeps them (local files or S3 objects, so `--ray` workers read them too)."""
    return [ScoreItem(p.name, p.location, p.prompt) for p in era_positives(era, env)]


def write_era_images(era: str, folder: Path, env: dict[str, str] | None = None) -> Path:
    """Write an era's positives into ``folder`` as ``<generator>/<prompt_id>-<image_index>.png``
    with ``images.csv`` (image, prompt, generator, prompt_id, image_index, image_sha256, category):
    a CSV that `eliq score --input` takes as it is. Every file is written atomically, the CSV
    last, so a CSV present lists only images that are there. Returns the CSV's path."""
    from eliq_pipeline.core.atomic import write_bytes
    from eliq_pipeline.core.images import sha256_file
    from eliq_pipeline.supervision.image_cache import image_key

    positives = era_positives(era, env)
    store = _artifact_store(env)
    folder = Path(folder)
    for positive in positives:
        target = folder / positive.name
        if not (target.is_file() and target.stat().st_size > 0 and sha256_file(target) == positive.image_sha256):
            write_bytes(target, store.get_bytes(image_key(positive.image_sha256)))
    csv_path = folder / ERA_IMAGES_CSV
    with staged_file(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ERA_IMAGES_COLUMNS)
        for p in positives:
            writer.writerow([p.name, p.prompt, p.generator, p.prompt_id, p.image_index, p.image_sha256, p.category])
    return csv_path


# ------------------------------------------------------------------------------ output file


def _check_output_path(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {path} must end in .csv or .parquet")


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if number != number else number  # NaN (e.g. from a parquet reader) -> missing


def _bool_or_none(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    return None  # informational column: an unreadable value is unknown, not fatal


def read_output(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier `eliq score` output (csv or parquet), typed like fresh rows; files
    without the prompt_truncated column (older outputs) read with it unknown (None)."""
    path = Path(path)
    _check_output_path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns, raw = table.column_names, table.to_pylist()
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns, raw = list(reader.fieldnames or []), list(reader)
    if tuple(columns) not in (OUTPUT_COLUMNS, LEGACY_OUTPUT_COLUMNS):
        raise ValueError(
            f"{path} exists but is not an `eliq score` output (columns {columns}, expected "
            f"{list(OUTPUT_COLUMNS)}); choose another --out or remove it"
        )
    return [
        {
            "image": str(row["image"]),
            "prompt": _clean_prompt(row["prompt"]),
            "s_vis": _float_or_none(row["s_vis"]),
            "s_ali": _float_or_none(row["s_ali"]),
            "error": row["error"] or None,
            "prompt_truncated": _bool_or_none(row.get("prompt_truncated")),
        }
        for row in raw
    ]


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""  # None is an empty cell
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else value  # repr of a float round-trips exactly


# ------------------------------------------------------------------------------ one writer per --out


def lock_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + LOCK_SUFFIX)


@contextmanager
def output_lock(out: Path, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``out`` (``<out>.lock``, see core.locks), waiting for it if
    another run holds it, and say so once: ``waiting for another eliq score writing <out> (pid N)``."""
    say = log or (lambda message: None)
    with exclusive_lock(lock_path(out), wait=True,
                        on_wait=lambda holder: say(f"waiting for another eliq score writing {out} (pid {holder})")):
        yield


def write_output(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write every row to a temp file next to ``path``, then rename: readers (and a rerun after
    a crash) only ever see a complete file."""
    path = Path(path)
    _check_output_path(path)
    with staged_file(path) as tmp:
        if path.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("image", pa.string()), ("prompt", pa.string()), ("s_vis", pa.float64()),
                                ("s_ali", pa.float64()), ("error", pa.string()), ("prompt_truncated", pa.bool_())])
            table = pa.Table.from_pylist([{c: row[c] for c in OUTPUT_COLUMNS} for row in rows], schema=schema)
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(OUTPUT_COLUMNS)
                for row in rows:
                    writer.writerow([_csv_cell(row[c]) for c in OUTPUT_COLUMNS])


# ------------------------------------------------------------------------------ scoring


def _load(item: ScoreItem) -> Any:
    from eliq_pipeline.core.images import decode_image, load_image

    if item.path is None:
        raise ValueError("no image path given")
    if isinstance(item.path, str) and item.path.startswith(S3_SCHEME):
        return decode_image(_read_s3_object(item.path), name=item.path)
    path = Path(item.path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return load_image(path)


def _read_s3_object(uri: str) -> bytes:
    from botocore.exceptions import ClientError

    bucket, key = _split_s3_uri(uri)
    try:
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"image object not found: {uri}") from None
        raise


def _error_text(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, (FileNotFoundError, ValueError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line per row, whatever the exception printed


def _row(item: ScoreItem, s_vis: float | None = None, s_ali: float | None = None, error: str | None = None,
         prompt_truncated: bool | None = None) -> dict[str, Any]:
    return {"image": item.image, "prompt": item.prompt, "s_vis": s_vis, "s_ali": s_ali, "error": error,
            "prompt_truncated": prompt_truncated}


def _scored_row(item: ScoreItem, result: Sequence[Any]) -> dict[str, Any]:
    s_vis, s_ali = result
    return _row(item, s_vis, s_ali, prompt_truncated=bool(getattr(result, "prompt_truncated", False)))


def _score_batch(scorer: Scorer, batch: Sequence[ScoreItem], batch_size: int) -> list[dict[str, Any]]:
    """Rows for one batch: unreadable images get an error row, the others are scored together.
    Should the batch fail inside the model, each image is retried alone so only the image at
    fault is marked."""
    loaded: dict[int, Any] = {}
    rows: list[dict[str, Any] | None] = [None] * len(batch)
    for i, item in enumerate(batch):
        try:
            loaded[i] = _load(item)
        except Exception as exc:  # any unreadable file is that row's problem, not the run's
            rows[i] = _row(item, error=_error_text(exc))
    order = sorted(loaded)
    try:
        scores = scorer.score([loaded[i] for i in order], [batch[i].prompt for i in order], batch_size=batch_size) if order else []
        for i, result in zip(order, scores):
            rows[i] = _scored_row(batch[i], result)
    except ScorerUnavailable:
        raise
    except Exception:
        for i in order:
            try:
                result, = scorer.score([loaded[i]], [batch[i].prompt], batch_size=1)
                rows[i] = _scored_row(batch[i], result)
            except Exception as exc:
                rows[i] = _row(batch[i], error=_error_text(exc))
    return [row for row in rows if row is not None]


def score_items(
    scorer: Scorer,
    items: Sequence[ScoreItem],
    out: Path,
    batch_size: int = 8,
    flush_every: int = 256,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ScoreSummary:
    """Score ``items`` into ``out``, resuming from what ``out`` already holds.

    Rows already in ``out`` without an error are kept and not rescored; rows with an error are
    retried (the file may have been fixed since). The file is rewritten after every
    ``flush_every`` images, so an interrupted run loses at most one chunk of work. The whole
    run holds ``out``'s lock (:func:`output_lock`): a concurrent run on the same ``out`` waits,
    then resumes from what this one wrote.
    """
    check_score_settings(out, batch_size, flush_every)
    out = Path(out)
    say = log or (lambda message: None)
    with output_lock(out, say):
        kept, todo = plan_resume(out, items, say)
        return collect_rows(out, kept, todo, _score_in_process(scorer, todo, batch_size, flush_every),
                            flush_every, progress)


def check_score_settings(out: Path, batch_size: int, flush_every: int) -> None:
    if batch_size < 1 or flush_every < 1:
        raise ValueError("--batch-size and --flush-every must be >= 1")
    _check_output_path(Path(out))


def plan_resume(out: Path, items: Sequence[ScoreItem],
                say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[ScoreItem]]:
    """The rows of ``out`` to keep and the items still to score (call with ``out``'s lock held)."""
    previous = read_output(out) if out.exists() else []
    wanted = {item.key for item in items}
    # Error rows of this input are retried; everything else already in the file stays as it is.
    kept = [row for row in previous if not (row["error"] and _row_key(row["image"], row["prompt"]) in wanted)]
    done = {_row_key(row["image"], row["prompt"]) for row in kept}
    todo = [item for item in items if item.key not in done]
    if previous:
        say(f"{out}: keeping {len(kept)} rows, retrying {len(previous) - len(kept)} error rows, "
            f"{len(todo)} images to score")
    return kept, todo


def _score_in_process(scorer: Scorer, todo: Sequence[ScoreItem], batch_size: int,
                      flush_every: int) -> Iterator[list[dict[str, Any]]]:
    # Batches never straddle a flush_every chunk, so collect_rows flushes at every chunk's end.
    for chunk_start in range(0, len(todo), flush_every):
        chunk = todo[chunk_start : chunk_start + flush_every]
        for start in range(0, len(chunk), batch_size):
            yield _score_batch(scorer, chunk[start : start + batch_size], batch_size)


def collect_rows(out: Path, kept: Sequence[dict[str, Any]], todo: Sequence[ScoreItem],
                 scored_batches: Iterable[Sequence[dict[str, Any]]], flush_every: int, progress: bool) -> ScoreSummary:
    """Write ``kept`` plus the rows of ``scored_batches`` (one per item of ``todo``, in any order)
    to ``out``: rewritten whenever ``flush_every`` new rows are waiting, and once more at the end
    with the new rows in ``todo``'s order."""
    from tqdm.auto import tqdm

    position = {item.key: i for i, item in enumerate(todo)}
    scored: list[dict[str, Any]] = []
    unflushed = errors = truncated = 0
    with tqdm(total=len(todo), unit="img", desc="scoring", disable=not progress, file=sys.stderr) as bar:
        for rows in scored_batches:
            scored.extend(rows)
            unflushed += len(rows)
            errors += sum(1 for row in rows if row["error"])
            truncated += sum(1 for row in rows if row["prompt_truncated"])
            bar.update(len(rows))
            if unflushed >= flush_every:
                write_output(out, [*kept, *scored])
                unflushed = 0
    missing = set(position) - {_row_key(row["image"], row["prompt"]) for row in scored}
    if missing:
        write_output(out, [*kept, *scored])  # keep what did come back; a rerun scores the rest
        raise RuntimeError(f"{len(missing)} of {len(todo)} images came back without a row; rerun to score them")
    in_order = sorted(scored, key=lambda row: position[_row_key(row["image"], row["prompt"])])
    if unflushed or in_order != scored or not todo:  # not todo: still leave a valid (possibly empty) file
        write_output(out, [*kept, *in_order])
    return ScoreSummary(scored=len(todo), errors=errors, kept=len(kept), total=len(kept) + len(scored),
                        truncated=truncated)


# ------------------------------------------------------------------------------ commands


class _LazyScorer:
    """Loads the bundle on the first image to score: a resumed run with nothing left to do
    never pays for loading the backbone (16 GB for the production one)."""

    def __init__(self, load: Callable[[], Scorer]) -> None:
        self._load, self._scorer = load, None

    def score(self, images: Sequence[Any], prompts: Sequence[str | None], batch_size: int = 8) -> list[tuple[float, float | None]]:
        if self._scorer is None:
            try:
                self._scorer = self._load()
            except Exception as exc:  # whatever stops loading stops the run (e.g. no CUDA here)
                raise ScorerUnavailable(str(exc)) from exc
        return self._scorer.score(images, prompts, batch_size=batch_size)


def run_score(args: argparse.Namespace) -> int:
    import torch

    from eliq_pipeline.critic.bundle import ELIQScorer, read_bundle_meta, verify_bundle

    out = Path(args.out)
    _check_output_path(out)
    if args.ray_workers is not None and not args.ray:
        raise ValueError("--ray-workers needs --ray")
    if args.era is not None:
        items = read_era_inputs(args.era)
    else:
        items = read_inputs(args.input, args.image_column, args.prompt_column)
    # A wrong or damaged --bundle fails now (BundleDamagedError names the files), before any row.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a format-1 bundle's warning comes once, from loading it
        verify_bundle(args.bundle)
    if out.exists():
        read_output(out)  # likewise an --out that is not ours

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    base = args.base
    if base is None and (built := tiny_backbone_of(args.bundle)) is not None:
        base = built
        say(f"base backbone: {read_bundle_meta(args.bundle)['base_ref']} from {base} ($ELIQ_HOME/models; --base to use another)")

    if args.ray:
        from eliq_pipeline.ray_scoring import score_items_on_ray

        summary = score_items_on_ray(items, out, address=args.ray, bundle=args.bundle, base=base,
                                     device=args.device, workers=args.ray_workers, threads=args.threads,
                                     batch_size=args.batch_size, flush_every=args.flush_every,
                                     progress=not args.no_progress, log=say)
    else:
        scorer = _LazyScorer(lambda: ELIQScorer.from_pretrained(args.bundle, base_override=base, device=args.device))
        threads = torch.get_num_threads()
        if args.threads is not None:
            # Small models on a busy CPU run far faster single-threaded (no OpenMP spin contention).
            torch.set_num_threads(max(1, args.threads))
        try:
            summary = score_items(scorer, items, out, batch_size=args.batch_size, flush_every=args.flush_every,
                                  progress=not args.no_progress, log=say)
        finally:
            torch.set_num_threads(threads)  # the process-wide setting is the caller's, not ours
    if summary.truncated:
        print(f"{summary.truncated} prompts were longer than the backbone takes and were cut to fit "
              "(prompt_truncated=true in their rows)", file=sys.stderr)
    print(f"scored {summary.scored} images ({summary.errors} with errors), kept {summary.kept} from an "
          f"earlier run; {summary.total} rows in {out}")
    return 0


def _era_provenance(era: str, head_dir: Path, profile: Any) -> dict[str, Any]:
    provenance: dict[str, Any] = {"era": era, "profile": profile.profile, "backbone": profile.settings().backbone}
    report = head_dir / "training_report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        provenance.update(heldout_accuracy=data.get("heldout_accuracy"), best_epoch=data.get("best_epoch"))
    namespace = head_dir / "embedding_namespace.json"
    if namespace.is_file():
        provenance["embedding_namespace"] = json.loads(namespace.read_text()).get("namespace")
    return provenance


def export_era(era: str, out: Path, env: dict[str, str] | None = None) -> Path:
    """Bundle an era's tuned_mllm + qqt_model from the artifact store configured by ``env``."""
    from eliq_pipeline import tiny
    from eliq_pipeline.critic.bundle import export_bundle
    from eliq_pipeline.definitions import load_era_value, resources_from_env

    profile = resources_from_env(env)["profile"]
    adapter_dir = load_era_value("tuned_mllm", era, env)  # FileNotFoundError says to materialize the era
    head_dir = load_era_value("qqt_model", era, env)
    return export_bundle(adapter_dir, head_dir, Path(out), base=tiny.resolve(profile.settings().backbone, profile.models_dir),
                         provenance=_era_provenance(era, head_dir, profile))


def models_dir(env: dict[str, str] | None = None) -> Path:
    """Where the tiny profile builds its toy models: ``$ELIQ_HOME/models`` (the profile's models_dir)."""
    from eliq_pipeline.definitions import eliq_home

    return eliq_home(env) / "models"


def tiny_backbone_of(bundle: str | Path, env: dict[str, str] | None = None) -> str | None:
    """The folder of a tiny bundle's toy backbone under ``$ELIQ_HOME/models`` (built there, from
    configs in code, if the pipeline has not built it yet); None for a bundle whose base is a hub
    id or path. The bundle's recorded base fingerprint still has to match when it is loaded, so a
    backbone built differently is refused, never silently used."""
    from eliq_pipeline import tiny
    from eliq_pipeline.critic.bundle import read_bundle_meta

    base_ref = str(read_bundle_meta(bundle)["base_ref"])
    if not base_ref.startswith(tiny.TINY_PREFIX):
        return None
    return tiny.resolve(base_ref, models_dir(env))


def run_export(args: argparse.Namespace) -> int:
    if args.out is None and args.images is None:
        raise ValueError("eliq export needs --out (the critic bundle), --images (the era's positives) or both")
    if args.out is not None:
        from eliq_pipeline.critic.bundle import read_bundle_meta

        out = export_era(args.era, Path(args.out))
        base_ref = read_bundle_meta(out)["base_ref"]
        backbone = tiny_backbone_of(out)
        where = f", built at {backbone}" if backbone else ""
        print(f"wrote the ELIQ scorer bundle of era {args.era} to {out} (base {base_ref}{where})\n"
              f"score the era's positives with: eliq score --bundle {out} --era {args.era} --out scores.csv\n"
              f"score your images with:         eliq score --bundle {out} --input <folder|csv> --out scores.csv")
        if backbone:
            print(f"(eliq score finds this toy backbone under $ELIQ_HOME/models; with another ELIQ_HOME "
                  f"add --base {backbone})")
    if args.images is not None:
        csv_path = write_era_images(args.era, Path(args.images))
        with csv_path.open(newline="", encoding="utf-8") as handle:
            count = sum(1 for _ in csv.DictReader(handle))
        print(f"wrote the {count} positive images of era {args.era} to {csv_path.parent} with their prompts in "
              f"{csv_path} (columns {', '.join(ERA_IMAGES_COLUMNS)}; eliq score --input {csv_path} scores them)")
    return 0


def register(subparsers: Any) -> None:
    """Add `score` and `export` to an argparse subparsers object (the `eliq` command's)."""
    score = subparsers.add_parser(
        "score", help="score images (folder, S3 prefix or CSV) with an exported critic bundle",
        description="Score images with an ELIQ bundle. Output columns: image, prompt, s_vis, s_ali, "
                    "error, prompt_truncated (true: the prompt was longer than the backbone takes and "
                    "its first tokens that fit were scored). Rerunning with the same --out keeps rows "
                    "already scored. Runs sharing an --out take turns: a second run waits for the "
                    "first (lock file <out>.lock), then adds its rows to the same file. With --ray, a "
                    "pool of scorers on a Ray cluster scores the images into the same output.")
    score.add_argument("--bundle", required=True, type=Path, help="bundle folder written by `eliq export`")
    source = score.add_mutually_exclusive_group(required=True)
    # A string, not a Path: Path would fold s3://bucket into s3:/bucket.
    source.add_argument("--input",
                        help="a folder of images (no prompts), an s3://bucket/prefix of images (no prompts; "
                             "endpoint ELIQ_S3_ENDPOINT, AWS credentials) or a CSV with an image column "
                             "(paths or s3:// URIs) and optional prompt column")
    source.add_argument("--era",
                        help="instead of --input: the positive images of this materialized era with their "
                             "prompts, read from the artifact store the ELIQ_* variables configure (local or "
                             "S3); rows are named <generator>/<prompt_id>-<image_index>.png, as "
                             "`eliq export --images` writes them")
    score.add_argument("--out", required=True, type=Path,
                       help="output .csv or .parquet (resumed if it exists; a second run on the same file "
                            "waits for the first, then adds its rows)")
    score.add_argument("--batch-size", type=int, default=8, help="rows per backbone forward pass (default 8)")
    score.add_argument("--base", default=None,
                       help="base backbone folder or hub id overriding the bundle's (default: the one the bundle "
                            "records; for a tiny bundle its toy backbone under $ELIQ_HOME/models)")
    score.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    score.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: torch's choice); 1 is fastest for tiny bundles. "
                            "With --ray: per scorer, and the CPUs each one reserves (default 1)")
    score.add_argument("--flush-every", type=int, default=256,
                       help="rewrite the output after this many images (default 256)")
    score.add_argument("--image-column", default="image", help="CSV column with image paths (default image)")
    score.add_argument("--prompt-column", default="prompt", help="CSV column with prompts (default prompt)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="score on a Ray cluster: auto, HOST:PORT, ray://HOST:10001, or local (start a Ray "
                            "runtime in this process). The bundle travels with the job; local inputs and a "
                            "--base folder must be at the same paths on every node (or the input on S3); "
                            "needs the ray extra")
    score.add_argument("--ray-workers", type=int, default=None, metavar="N",
                       help="with --ray: scorers in the pool, each loading the bundle once (default: one per "
                            "GPU of the cluster with --device cuda, each on its own GPU; else 1)")
    score.set_defaults(func=run_score)

    export = subparsers.add_parser("export", help="bundle a materialized era's critic into one folder, and/or "
                                                  "write its positive images as files",
                                   description="Write the ELIQ scorer bundle (adapter + scoring head) of an era "
                                               "(--out) and/or the era's positive images with their prompts "
                                               "(--images), from the artifact store configured by ELIQ_* variables.")
    export.add_argument("--era", required=True, help="a materialized era")
    export.add_argument("--out", type=Path, default=None, help="bundle folder to write (replaced if it is a bundle)")
    export.add_argument("--images", type=Path, default=None, metavar="FOLDER",
                        help=f"write the era's positive images into FOLDER as <generator>/<prompt_id>-<image_index>.png "
                             f"with {ERA_IMAGES_CSV} (image, prompt, ...), which `eliq score --input` takes as it is")
    export.set_defaults(func=run_export)


def main(argv: Iterable[str] | None = None) -> int:
    """Standalone entry (`python -m eliq_pipeline.score_cli score ...`), same errors as `eliq`."""
    parser = argparse.ArgumentParser(prog="eliq", description="score images / export a critic bundle")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"eliq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
