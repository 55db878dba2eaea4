"""Human-rated benchmark datasets (images + MOS), read into one common in-memory form.

Over 400 lines: data-format heavy: one loader per benchmark's published layout, registered side by side.

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

from eliq_pipeline.core.registry import Registry

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


# ---------------------------------------------------------------- spreadsheet / .mat helpers


def _read_xlsx(path: Path) -> list[tuple[int, list[Any]]]:
    """Rows of the first worksheet as (sheet row number, cell values); empty rows dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark annotation file not found: {path}")
    try:
        import openpyxl  # imported here: only the spreadsheet-described benchmarks need it
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path} needs openpyxl (pip install 'openpyxl>=3.1,<4')") from exc
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        rows: list[tuple[int, list[Any]]] = []
        for row_no, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            cells = list(values)
            if any(v is not None and str(v).strip() != "" for v in cells):
                rows.append((row_no, cells))
        return rows
    finally:
        workbook.close()


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    # Whole numbers typed into a name column come back as floats (1.0); keep them readable.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _cell_number(path: Path, sheet_row: int, column: str, value: Any) -> float:
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
    if not math.isfinite(number):
        raise ValueError(
            f"{path}: sheet row {sheet_row}, column {column!r}: expected a finite number, got {value!r}"
        )
    return number


def _header_index(path: Path, header: list[Any], wanted: Iterable[str]) -> dict[str, int]:
    """Column positions by name, matched case- and whitespace-insensitively."""
    norm = {_cell_text(h).lower(): i for i, h in enumerate(header) if _cell_text(h)}
    found: dict[str, int] = {}
    missing: list[str] = []
    for name in wanted:
        index = norm.get(name.lower())
        if index is None:
            missing.append(name)
        else:
            found[name] = index
    if missing:
        shown = ", ".join(repr(_cell_text(h)) for h in header if _cell_text(h)) or "(nothing)"
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; header has {shown}")
    return found


def _read_mat_vector(path: Path, key: str) -> np.ndarray:
    """One numeric vector from a MATLAB .mat file, flattened; every value must be finite."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark annotation file not found: {path}")
    from scipy.io import loadmat  # scipy is a core dependency; imported lazily to keep import cheap

    data = loadmat(str(path))
    if key not in data:
        keys = ", ".join(sorted(k for k in data if not k.startswith("__"))) or "(none)"
        raise ValueError(f"{path}: no variable {key!r}; it holds {keys}")
    values = np.asarray(data[key], dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{path}: {key}[{int(bad[0])}] is not a finite number ({bad.size} such value(s))")
    return values


# ---------------------------------------------------------------- AIGCIQA2023 and SPAQ

# AIGCIQA2023 .mat layout: 6 models x 100 prompts x 4 images, numbered model-major.
AIGCIQA2023_IMAGES_PER_MODEL = 400
AIGCIQA2023_IMAGES_PER_PROMPT = 4
AIGCIQA2023_CSV_COLUMNS = ("name", "prompt", "quality_mos", "correspondence_mos")


def aigciqa2023_layout(index: int) -> tuple[int, int]:
    """(model index, prompt index) of image `index`.png in the original AIGCIQA2023 release."""
    return (
        index // AIGCIQA2023_IMAGES_PER_MODEL,
        (index % AIGCIQA2023_IMAGES_PER_MODEL) // AIGCIQA2023_IMAGES_PER_PROMPT,
    )


def _aigciqa2023_prompts(path: Path) -> list[str]:
    """Prompt texts (third column) of AIGCIQA2023_Prompts.xlsx, in row order.

    The release has no header row (style, class, prompt per row); a copy re-saved with a header
    whose third cell reads 'prompt' is accepted too.
    """
    rows = _read_xlsx(path)
    if rows and _cell_text(rows[0][1][2] if len(rows[0][1]) > 2 else None).lower() == "prompt":
        rows = rows[1:]
    prompts: list[str] = []
    for sheet_row, cells in rows:
        text = _cell_text(cells[2] if len(cells) > 2 else None)
        if not text:
            raise ValueError(f"{path}: sheet row {sheet_row}: empty prompt (expected style, class, prompt)")
        prompts.append(text)
    return prompts


def _find_file(root: Path, name: str, folders: Iterable[str]) -> Path:
    """root/<folder>/name for the first folder where it exists (the first candidate if none)."""
    candidates = [root / folder / name if folder else root / name for folder in folders]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _aigciqa2023_csv(root: Path, csv_name: str | None) -> Path | None:
    """The merged-CSV variant's file: csv_name if given, else the first root/*.csv with its columns."""
    if csv_name is not None:
        return root / csv_name
    for candidate in sorted(root.glob("*.csv")):
        with candidate.open(newline="", encoding="utf-8-sig") as handle:
            header = {h.strip() for h in next(csv.reader(handle), [])}
        if set(AIGCIQA2023_CSV_COLUMNS) <= header:
            return candidate
    return None


@BENCHMARKS.register("aigciqa2023", kind="aigc", has_alignment=True)
def load_aigciqa2023(
    root: Path,
    *,
    limit: int | None = None,
    layout: Literal["auto", "mat", "csv"] = "auto",
    csv_name: str | None = None,
    prompts_name: str = "AIGCIQA2023_Prompts.xlsx",
) -> Benchmark:
    """AIGCIQA2023 (2,400 images of 6 T2I models on 100 prompts), quality + correspondence MOS.

    Original release ('mat' layout): images Image/allimg/<N>.png; MOS vectors in
    DATA/MOS/mosz1.mat (quality), mosz2.mat (authenticity, unused here), mosz3.mat
    (correspondence, reported as alignment), variable MOSz, entry N for image N; prompts in
    AIGCIQA2023_Prompts.xlsx (100 rows: style, class, prompt), image N showing prompt
    (N % 400) // 4 (see aigciqa2023_layout). Merged 'csv' layout: one CSV with
    name,prompt,style,class,quality_mos,authenticity_mos,correspondence_mos,... and image names
    relative to Image/allimg/ when that folder exists, else to the CSV's folder. 'auto' takes the
    .mat layout when DATA/MOS/mosz1.mat exists, else the CSV.
    """
    root = Path(root)
    _check_limit(limit)
    mos_dir = root / "DATA" / "MOS"
    if layout == "auto":
        layout = "mat" if (mos_dir / "mosz1.mat").is_file() else "csv"
    if layout == "csv":
        csv_path = _aigciqa2023_csv(root, csv_name)
        if csv_path is None:
            raise FileNotFoundError(
                f"AIGCIQA2023 at {root}: neither {mos_dir / 'mosz1.mat'} nor a CSV with columns "
                f"{', '.join(AIGCIQA2023_CSV_COLUMNS)} was found"
            )
        allimg = csv_path.parent / "Image" / "allimg"
        return _table_benchmark(
            name="aigciqa2023",
            kind="aigc",
            csv_path=csv_path,
            image_dir=allimg if allimg.is_dir() else csv_path.parent,
            image_column="name",
            quality_column="quality_mos",
            prompt_column="prompt",
            align_column="correspondence_mos",
            limit=limit,
        )
    if layout != "mat":
        raise ValueError(f"layout must be 'auto', 'mat' or 'csv', got {layout!r}")
    quality = _read_mat_vector(mos_dir / "mosz1.mat", "MOSz")
    alignment = _read_mat_vector(mos_dir / "mosz3.mat", "MOSz")
    if alignment.shape != quality.shape:
        raise ValueError(
            f"AIGCIQA2023 at {root}: mosz1.mat has {quality.size} values but mosz3.mat has {alignment.size}"
        )
    prompts_path = _find_file(root, prompts_name, ("", "DATA", "DATA/MOS"))
    prompts = _aigciqa2023_prompts(prompts_path)
    needed = max((aigciqa2023_layout(n)[1] for n in range(quality.size)), default=-1) + 1
    if len(prompts) < needed:
        raise ValueError(f"{prompts_path}: {len(prompts)} prompt row(s), the {quality.size} images need {needed}")
    image_dir = root / "Image" / "allimg"
    count = quality.size if limit is None else min(limit, quality.size)
    items = [
        BenchmarkItem(
            name=f"{n}.png",
            image_path=image_dir / f"{n}.png",
            prompt=prompts[aigciqa2023_layout(n)[1]],
            mos_quality=float(quality[n]),
            mos_align=float(alignment[n]),
        )
        for n in range(count)
    ]
    return _check_images(Benchmark("aigciqa2023", "aigc", items), root)


SPAQ_ANNOTATION = "Annotations/MOS and Image attribute scores.xlsx"


@BENCHMARKS.register("spaq", kind="ugc", has_alignment=False)
def load_spaq(
    root: Path,
    *,
    limit: int | None = None,
    annotation: str = SPAQ_ANNOTATION,
    image_subdir: str = "TestImage",
) -> Benchmark:
    """SPAQ (11,125 smartphone photos): the 'Image name' and 'MOS' columns of
    Annotations/MOS and Image attribute scores.xlsx, images in TestImage/<Image name>.
    image_subdir lets a downscaled copy of the images (the usual practice) be used instead."""
    root = Path(root)
    _check_limit(limit)
    path = root / annotation
    rows = _read_xlsx(path)
    if not rows:
        raise ValueError(f"{path}: the first worksheet is empty")
    header_row, header = rows[0]
    columns = _header_index(path, header, ("Image name", "MOS"))
    items: list[BenchmarkItem] = []
    # Every row is parsed even with a limit, so a bad row fails fast whatever the subset.
    for sheet_row, cells in rows[1:]:
        cells = cells + [None] * (len(header) - len(cells))
        name = _cell_text(cells[columns["Image name"]])
        if not name:
            raise ValueError(f"{path}: sheet row {sheet_row}, column 'Image name': empty image name")
        items.append(
            BenchmarkItem(
                name=name,
                image_path=root / image_subdir / name,
                prompt=None,
                mos_quality=_cell_number(path, sheet_row, "MOS", cells[columns["MOS"]]),
            )
        )
    if limit is not None:
        items = items[:limit]
    return _check_images(Benchmark("spaq", "ugc", items), root)


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



# ---------------------------------------------------------------- configuration and image checks

# name -> root folder, or {"root": folder, "loader": registered name, **loader options}
BenchmarkConfig = Mapping[str, str | os.PathLike[str] | Mapping[str, Any]]


def _config_entry(
    name: str, entry: str | os.PathLike[str] | Mapping[str, Any], datasets_dir: Path | None
) -> tuple[str, Path, dict[str, Any]]:
    """(loader name, root, loader options) of one explicit entry."""
    if isinstance(entry, Mapping):
        options = dict(entry)
        if "root" not in options:
            raise ValueError(f"benchmark {name!r}: a mapping entry needs a 'root' key, got {sorted(options)}")
        root = Path(os.path.expanduser(str(options.pop("root"))))
        loader = str(options.pop("loader", name))
    else:
        root, loader, options = Path(os.path.expanduser(str(entry))), name, {}
    if not root.is_absolute() and datasets_dir is not None:
        root = datasets_dir / root
    BENCHMARKS.get(loader)  # an unknown loader is a configuration error, not a missing dataset
    return loader, root, options


def benchmarks_from_config(
    datasets_dir: Path | str | None,
    explicit: BenchmarkConfig | None = None,
    *,
    verify: bool = True,
    limit: int | None = None,
    max_errors: int = _MAX_LISTED,
) -> tuple[list[Benchmark], list[tuple[str, str]]]:
    """Load every benchmark found under datasets_dir plus every explicitly configured one.

    explicit maps a benchmark name to its root folder, or to {"root": ..., "loader": ...,
    **loader options} ("loader" defaults to the name and picks the registered layout, so several
    generic-csv sets can be configured under their own names; the loaded benchmark takes the
    configured name). Relative roots are taken under datasets_dir. An explicit entry replaces the
    folder of the same name under datasets_dir.

    Returns (present, skipped): a benchmark whose root does not exist is skipped with a reason,
    because deployments legitimately lack some datasets; a present one that cannot be read
    (missing annotation, bad row, missing image, and with verify=True an undecodable image)
    raises, naming the first few offenders, because silently dropping it would hide broken data.
    Registered fixed-layout benchmarks absent from datasets_dir are reported as skipped too, so a
    report can say what was not evaluated.
    """
    base = Path(datasets_dir) if datasets_dir is not None else None
    explicit = dict(explicit or {})
    planned: dict[str, tuple[str, Path, dict[str, Any]]] = {}
    skipped: list[tuple[str, str]] = []
    if base is not None and base.is_dir():
        for name in discover_benchmarks(base):
            planned[name] = (name, base / name, {})
    for name in BENCHMARKS.names():
        if name in planned or name in explicit or BENCHMARKS.meta(name).get("generic"):
            continue
        where = f"no folder {base / name}" if base is not None else "no datasets directory configured"
        skipped.append((name, where))
    for name, entry in explicit.items():
        loader, root, options = _config_entry(name, entry, base)
        if not root.exists():
            planned.pop(name, None)
            skipped.append((name, f"configured root {root} does not exist"))
            continue
        planned[name] = (loader, root, options)
    present: list[Benchmark] = []
    for name in sorted(planned):
        loader, root, options = planned[name]
        if limit is not None:
            options = {**options, "limit": limit}
        benchmark = load_benchmark(loader, root, **options)
        if benchmark.name != name:
            benchmark = Benchmark(name, benchmark.kind, benchmark.items)
        if verify:
            verify_images(benchmark, max_errors=max_errors)
        present.append(benchmark)
    return present, sorted(skipped)


def _decode_error(path: Path) -> str | None:
    """Why the image at path cannot be decoded, or None when it can."""
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums (PNG CRCs) without decoding pixels
        with Image.open(path) as image:
            # verify() leaves truncated JPEG entropy data unnoticed, so the pixels are decoded
            # too; draft() lets JPEGs decode at 1/8 scale, which still reads every byte.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_images(benchmark: Benchmark, max_errors: int = _MAX_LISTED, workers: int | None = None) -> None:
    """Decode every image of the benchmark; raise ValueError naming the first unreadable ones.

    Runs on threads (PIL's decoders release the GIL); AGIQA-3K's 2,982 JPEGs take a few seconds.
    """
    paths = [item.image_path for item in benchmark.items]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = [(p, e) for p, e in zip(paths, pool.map(_decode_error, paths)) if e is not None]
    if errors:
        shown = "; ".join(f"{p} ({e})" for p, e in errors[:max_errors])
        more = f" and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
        raise ValueError(
            f"benchmark {benchmark.name!r}: {len(errors)} of {len(paths)} image(s) unreadable: {shown}{more}"
        )
