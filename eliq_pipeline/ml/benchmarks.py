"""Human-rated benchmark datasets (images + MOS), read into one common in-memory form.

Each loader is registered under the folder name it expects inside a datasets directory, so
`discover_benchmarks(datasets_dir)` finds what is present and adding a benchmark is one decorated
function. Loaders validate eagerly (bad rows, missing images) because a benchmark run that fails
after hours of embedding extraction is far more expensive than a failed load.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from eliq_pipeline.ml.registry import Registry

BenchmarkKind = Literal["aigc", "ugc"]

# How many missing files an error message lists before summarising.
_MAX_LISTED = 5


@dataclass(frozen=True)
class BenchmarkItem:
    """One rated image. prompt / mos_align are None for UGC benchmarks without prompts."""

    name: str
    image_path: Path
    prompt: str | None
    mos_quality: float
    mos_align: float | None = None


@dataclass
class Benchmark:
    name: str
    kind: BenchmarkKind
    items: list[BenchmarkItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("aigc", "ugc"):
            raise ValueError(f"benchmark {self.name!r}: kind must be 'aigc' or 'ugc', got {self.kind!r}")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_alignment(self) -> bool:
        """True when every item carries a prompt and an alignment MOS."""
        return bool(self.items) and all(
            it.mos_align is not None and it.prompt is not None for it in self.items
        )

    def mos_quality(self) -> list[float]:
        return [it.mos_quality for it in self.items]

    def mos_align(self) -> list[float | None]:
        return [it.mos_align for it in self.items]

    def head(self, n: int) -> Benchmark:
        """The first n items (deterministic subset, for tests and smoke runs)."""
        return Benchmark(self.name, self.kind, list(self.items[:n]))


# Loader contract: loader(root: Path, *, limit: int | None = None, **options) -> Benchmark,
# where root is the benchmark's own folder; meta records kind and whether it rates alignment.
BENCHMARKS: Registry[Callable[..., Benchmark]] = Registry("benchmark")


# ---------------------------------------------------------------- shared parsing helpers


def _read_csv(path: Path, required: Iterable[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows as (line number, row); checks the header has every required column."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark annotation file not found: {path}")
    # utf-8-sig: some benchmark CSVs were saved by Excel with a BOM in front of the header.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                f"header has {', '.join(map(repr, header)) or '(nothing)'}"
            )
        rows = []
        for raw in reader:
            # DictReader keys come from the unstripped header; normalise them once here.
            rows.append((reader.line_num, {(k or "").strip(): (v or "") for k, v in raw.items()}))
    return rows


def _number(path: Path, row_no: int, line: int, column: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(
            f"{path}: row {row_no} (line {line}), column {column!r}: "
            f"expected a finite number, got {value!r}"
        )
    return number


def _optional_number(path: Path, row_no: int, line: int, column: str, value: str) -> float | None:
    return None if value.strip() == "" else _number(path, row_no, line, column, value)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")


def _check_images(benchmark: Benchmark, root: Path) -> Benchmark:
    missing = [it.image_path for it in benchmark.items if not it.image_path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise ValueError(
            f"benchmark {benchmark.name!r} at {root}: {len(missing)} of {len(benchmark)} image(s) "
            f"missing: {shown}{more}"
        )
    return benchmark


def _table_benchmark(
    *,
    name: str,
    kind: BenchmarkKind,
    csv_path: Path,
    image_dir: Path,
    image_column: str,
    quality_column: str,
    prompt_column: str | None,
    align_column: str | None,
    limit: int | None,
) -> Benchmark:
    """Shared body for CSV-described benchmarks: parse every row, keep the first `limit`."""
    _check_limit(limit)
    required = [c for c in (image_column, quality_column, prompt_column, align_column) if c]
    rows = _read_csv(csv_path, required)
    items: list[BenchmarkItem] = []
    # Every row is parsed even with a limit, so a bad row fails fast whatever the subset.
    for row_no, (line, row) in enumerate(rows, start=1):
        image = row[image_column].strip()
        if not image:
            raise ValueError(
                f"{csv_path}: row {row_no} (line {line}), column {image_column!r}: empty image name"
            )
        items.append(
            BenchmarkItem(
                name=image,
                image_path=image_dir / image,
                prompt=row[prompt_column] if prompt_column else None,
                mos_quality=_number(csv_path, row_no, line, quality_column, row[quality_column]),
                mos_align=(
                    _optional_number(csv_path, row_no, line, align_column, row[align_column])
                    if align_column
                    else None
                ),
            )
        )
    if limit is not None:
        items = items[:limit]
    return _check_images(Benchmark(name, kind, items), csv_path.parent)


# ---------------------------------------------------------------- registered loaders


@BENCHMARKS.register("agiqa-3k", kind="aigc", has_alignment=True)
def load_agiqa_3k(root: Path, *, limit: int | None = None) -> Benchmark:
    """AGIQA-3K: data.csv (name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,
    std_align) with images in images/<name>. The prompt column already holds the full prompt
    (adjectives and style appended), which is what the images were generated from."""
    root = Path(root)
    return _table_benchmark(
        name="agiqa-3k",
        kind="aigc",
        csv_path=root / "data.csv",
        image_dir=root / "images",
        image_column="name",
        quality_column="mos_quality",
        prompt_column="prompt",
        align_column="mos_align",
        limit=limit,
    )


@BENCHMARKS.register("aigiqa-20k", kind="aigc", has_alignment=False)
def load_aigiqa_20k(
    root: Path, *, limit: int | None = None, csv_name: str = "data.csv", image_subdir: str = ""
) -> Benchmark:
    """AIGIQA-20K: a CSV with name,prompt,mos; image names relative to image_subdir."""
    root = Path(root)
    return _table_benchmark(
        name="aigiqa-20k",
        kind="aigc",
        csv_path=root / csv_name,
        image_dir=root / image_subdir if image_subdir else root,
        image_column="name",
        quality_column="mos",
        prompt_column="prompt",
        align_column=None,
        limit=limit,
    )


@BENCHMARKS.register("koniq-10k", kind="ugc", has_alignment=False)
def load_koniq_10k(root: Path, *, limit: int | None = None, resolution: str | None = None) -> Benchmark:
    """KonIQ-10k: koniq10k_scores_and_distributions.csv (image_name,...,MOS,...) with images in
    512x384/ or 1024x768/ (the smaller one by default when both are present)."""
    root = Path(root)
    if resolution is None:
        present = [r for r in ("512x384", "1024x768") if (root / r).is_dir()]
        resolution = present[0] if present else "512x384"
    return _table_benchmark(
        name="koniq-10k",
        kind="ugc",
        csv_path=root / "koniq10k_scores_and_distributions.csv",
        image_dir=root / resolution,
        image_column="image_name",
        quality_column="MOS",
        prompt_column=None,
        align_column=None,
        limit=limit,
    )


@BENCHMARKS.register("generic-csv", kind="aigc", generic=True)
def load_generic_csv(
    root: Path,
    *,
    limit: int | None = None,
    csv_name: str = "data.csv",
    image_column: str = "image",
    quality_column: str = "mos",
    prompt_column: str | None = None,
    align_column: str | None = None,
    kind: BenchmarkKind = "aigc",
    name: str = "generic-csv",
) -> Benchmark:
    """Any CSV with an image column and a quality-MOS column, optionally prompt and alignment
    MOS. `root` is the CSV's folder (the CSV is root/csv_name) or the CSV file itself; image
    paths in the CSV are relative to the CSV's folder. An empty alignment cell reads as None."""
    root = Path(root)
    csv_path = root if root.is_file() else root / csv_name
    return _table_benchmark(
        name=name,
        kind=kind,
        csv_path=csv_path,
        image_dir=csv_path.parent,
        image_column=image_column,
        quality_column=quality_column,
        prompt_column=prompt_column,
        align_column=align_column,
        limit=limit,
    )


# ---------------------------------------------------------------- discovery


def load_benchmark(name: str, root: Path, **options: object) -> Benchmark:
    """Load a registered benchmark from its folder (root is that folder, not its parent)."""
    return BENCHMARKS.get(name)(Path(root), **options)


def discover_benchmarks(datasets_dir: Path | None) -> list[str]:
    """Registered benchmark names whose folder exists under datasets_dir (sorted).

    None or a missing directory means no benchmarks, not an error: deployments without
    benchmark data still run the rest of the pipeline.
    """
    if datasets_dir is None:
        return []
    datasets_dir = Path(datasets_dir)
    if not datasets_dir.is_dir():
        return []
    return [name for name in BENCHMARKS.names() if (datasets_dir / name).is_dir()]
