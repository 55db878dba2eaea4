"""The `import` generator backend: images made elsewhere (API-only T2I models) enter an era.

Over 400 lines: one backend whose bad-input and confinement policy (below) must be read and changed as a whole.

`spec.model` is a local folder or an `s3://bucket/prefix` holding the images and a manifest CSV
(`manifest.csv` unless configured) with columns

    file                   path of the image, relative to the folder / prefix (required)
    prompt_id and/or prompt   which prompt the image answers (at least one column, per row one value)
    sha256                 optional: hex digest of the file; checked, and part of the revision
    category               optional: the prompt's category (a comma list), read by `manifest_prompts`

A row keyed by `prompt` matches the prompt text (whitespace-normalised); a row keyed by
`prompt_id` matches the bank's id (`prompts.prompt_id_for(text)`), so a manifest exported from
the `prompts` table works as is.

Several images per prompt (real exports have several seeds per prompt): with
`on_duplicate="all"` every row of a prompt is its own image. `image_count(prompt)` says how many
usable images a prompt has (manifest order), and `generate(..., indices=[...])` returns the
index-th of each prompt (index 0 by default, so callers that know one image per prompt are
unchanged). The same file listed twice for one prompt is not a second image: the later row is a
counted skip (`duplicate_file`).

Prompts from the manifest: `manifest_prompts()` lists the distinct prompt texts (with the optional
`category` column), so an era can take its prompt bank from its imports; `validate=False` skips
decoding the images in the constructor when only the prompts are needed.

Bad input policy (why: a generator must never crash a run halfway and lose finished images):
  * manifest-level problems (missing / not UTF-8 / missing columns / malformed or escaping rows /
    duplicate prompts) raise `ManifestError` from the constructor, before any image is produced;
  * image-level problems (missing file, corrupt or truncated data, decompression bomb, tiny image,
    checksum mismatch) are counted skips, logged with the file name; every row is validated
    eagerly in the constructor, so `report()` is complete before generation and the caller can
    keep only `has_image()` prompts. Asking `generate` for a prompt none of whose images is usable
    raises `ImportSkippedError` naming prompt, file and reason (an index past `image_count` raises
    `IndexError` naming the prompt and the count); `strict=True` raises on the first bad image
    instead. With `validate=False` nothing is decoded up front: `report()` counts rows only,
    `image_count` counts listed rows, and a bad image fails in `generate` (`ImageRefused`);
  * duplicate prompts: an error naming both rows by default (two images for one prompt is an
    ambiguous export); `on_duplicate="first"` keeps the first row and counts the others;
    `on_duplicate="all"` keeps every row as its own image (a row whose `prompt` and `prompt_id`
    name two different listed prompts is then a `ManifestError`; a file listed twice for one
    prompt is a counted `duplicate_file` skip);
  * non-RGB images (CMYK, 16-bit, alpha, palette, grey) are normalised with `images.to_rgb`
    (alpha composited on white) and counted as converted.

Confinement: the manifest and every image must resolve inside the import folder (or under the S3
prefix). A `manifest` option that leaves the folder, or a manifest that is a symlink leading out
of it, is a `ManifestError` (the outside file is never read); an image symlink leading out is a
counted skip (`outside_folder`) and never read. `..` segments and absolute paths are refused for
S3 keys as for local paths. Manifest errors name the file, line, byte offset and the columns
expected, never text from the file (a wrong `manifest` could point at any file).

Imported images have no sampler behind them (`can_sample = False`): AI-specific negatives that
re-render the prompt with the positive's own generator (degraded prompts, premature decoding,
appearance prompts, prompt variants) cannot be made for them; the pipeline skips and reports those.

Options come from constructor kwargs, else `spec.params["call_kwargs"]` (the spec only admits the
generic generator params, and `call_kwargs` is its slot for backend-specific settings).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from eliq_pipeline.supervision.generators import KNOWN_PARAMS, GeneratorSpec
from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.supervision.prompts import prompt_id_for

LOG = logging.getLogger(__name__)

DEFAULT_MANIFEST = "manifest.csv"
DEFAULT_MIN_SIDE = 64  # the tiny profile's image size; anything smaller is a thumbnail or an error image
IMPORT_OPTIONS = frozenset({"manifest", "endpoint_url", "min_side", "max_pixels", "on_duplicate", "strict"})
ON_DUPLICATE = ("error", "first", "all")  # the values of the `on_duplicate` option

# skip reasons (stable names: they become metadata keys)
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
CHECKSUM_MISMATCH = "checksum_mismatch"
DUPLICATE_PROMPT = "duplicate_prompt"
DUPLICATE_FILE = "duplicate_file"  # on_duplicate="all": the same file listed again for the same prompt
OUTSIDE_FOLDER = "outside_folder"


class ManifestError(ValueError):
    """The manifest itself is unusable; the message names the file (and line or byte offset)."""


class ImportSkippedError(KeyError):
    """The manifest has a row for the prompt, but its image was refused at import."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OutsideSource(PermissionError):
    """A path of the import resolves outside its folder / prefix; it is not read."""


class ImageRefused(ValueError):
    """One image failed validation; `reason` is one of the skip reasons above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ImportReport:
    """What an import did, for materialization metadata."""

    source: str
    manifest_sha256: str
    rows: int = 0
    imported: int = 0
    converted: int = 0  # imported images that were not 8-bit RGB (subset of `imported`)
    converted_modes: dict[str, int] = field(default_factory=dict)  # original PIL mode -> count
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # line, file, reason, message

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def as_metadata(self, max_files: int = 20) -> dict[str, Any]:
        """Flat counts plus the first `max_files` skipped files (metadata stays small)."""
        meta: dict[str, Any] = {
            "import_source": self.source,
            "import_manifest_sha256": self.manifest_sha256,
            "import_rows": self.rows,
            "import_imported": self.imported,
            "import_converted": self.converted,
            "import_skipped": self.skipped_total,
        }
        meta.update({f"import_converted_from_{mode}": n for mode, n in sorted(self.converted_modes.items())})
        meta.update({f"import_skipped_{reason}": n for reason, n in sorted(self.skipped.items())})
        if self.skipped_files:
            meta["import_skipped_files"] = [
                f"line {s['line']}: {s['file']}: {s['reason']}" for s in self.skipped_files[:max_files]
            ]
        return meta

    def _skip(self, line: int, file: str, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_files.append({"line": str(line), "file": file, "reason": reason, "message": message})


@dataclass(frozen=True)
class _Row:
    line: int
    file: str
    prompt: str
    prompt_id: str
    sha256: str
    category: str = ""


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _prompt_keys(text: str) -> list[str]:
    """Every key a prompt text may be listed under in a manifest."""
    return [f"text:{_normalise(text)}", f"id:{prompt_id_for(text)}"]


def lexically_inside(rel: str) -> bool:
    """A relative path without '..' segments, root or drive: by its text it names nothing outside the
    import folder / S3 prefix (symlinks are checked when a local file is read). For the manifest
    option and every `file` of a manifest; the eras-file checks can use it before any run."""
    posix = PurePosixPath(rel.replace("\\", "/"))
    return bool(posix.parts) and not posix.is_absolute() and ".." not in posix.parts and ":" not in posix.parts[0]


def decode_checked(data: bytes, name: str, min_side: int, max_pixels: int) -> tuple[Image.Image, str]:
    """Decode one imported image fully and validate it; returns (RGB image, original mode).

    Raises `ImageRefused` with a reason. PIL only *warns* between MAX_IMAGE_PIXELS and twice
    that; an imported image that large is refused too (we would not train on a 100 MP image).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                size = probe.size
                probe.verify()  # structural check (PNG CRCs) before the costly full decode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(DECOMPRESSION_BOMB, f"{name}: refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # PIL raises many types for bad data; one clear reason is what we need
        raise ImageRefused(CORRUPT_IMAGE, f"{name}: cannot decode image: {exc}") from exc
    width, height = size
    if width * height > max_pixels:
        raise ImageRefused(
            DECOMPRESSION_BOMB, f"{name}: refused as a decompression bomb: {width}x{height} exceeds {max_pixels} pixels"
        )
    if min(width, height) < min_side:
        raise ImageRefused(TOO_SMALL, f"{name}: {width}x{height} is smaller than the minimum side {min_side}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # full decode: truncated data fails here, not later in training
        mode = image.mode
        rgb = to_rgb(image)
    except Exception as exc:
        raise ImageRefused(CORRUPT_IMAGE, f"{name}: cannot decode image: {exc}") from exc
    return rgb, mode


class ImportGenerator:
    """Serves pre-made images from a folder or S3 prefix as if they were generated.

    `generate(prompts, seeds, indices=None)` returns the imported image of each prompt (the
    index-th usable one with `indices`; `image_count(prompt)` says how many there are). Seeds are
    ignored: an imported image was made once, elsewhere, with whatever seed the API chose, so the
    same prompt and index always yield the same image (which keeps the content cache consistent too).
    """

    # No sampler: it cannot render another prompt or decode latents early (see backends.can_sample).
    can_sample = False

    def __init__(
        self,
        spec: GeneratorSpec,
        device: str = "cpu",
        *,
        manifest: str | None = None,
        endpoint_url: str | None = None,
        min_side: int | None = None,
        max_pixels: int | None = None,
        on_duplicate: str | None = None,
        strict: bool | None = None,
        validate: bool = True,
        client: Any = None,
        dtype: Any = None,
        local_files_only: bool = False,
    ) -> None:
        # device, dtype and local_files_only are accepted for drop-in use with the diffusers backend; no model runs here
        self.spec = spec
        options = self._options(spec)
        given = {"manifest": manifest, "endpoint_url": endpoint_url, "min_side": min_side,
                 "max_pixels": max_pixels, "on_duplicate": on_duplicate, "strict": strict}
        options.update({k: v for k, v in given.items() if v is not None})
        self.min_side = int(options.get("min_side", DEFAULT_MIN_SIDE))
        self.max_pixels = int(options.get("max_pixels") or Image.MAX_IMAGE_PIXELS or 64_000_000)
        self.on_duplicate = str(options.get("on_duplicate", "error"))
        if self.on_duplicate not in ON_DUPLICATE:
            raise ValueError(
                f"generator {spec.id!r}: on_duplicate must be 'error', 'first' or 'all', got {self.on_duplicate!r}"
            )
        self.strict = bool(options.get("strict", False))
        manifest_name = str(options.get("manifest", DEFAULT_MANIFEST))

        manifest_name = self._open_source(spec, manifest_name, options, client)
        raw = self._read_manifest(manifest_name)
        self._revision = "import:" + hashlib.sha256(raw).hexdigest()[:16]
        rows = self._parse_manifest(raw)
        self._report = ImportReport(source=spec.model, manifest_sha256=hashlib.sha256(raw).hexdigest(), rows=len(rows))
        self._parsed: list[_Row] = rows  # every row, duplicates included (for manifest_prompts)
        self._groups: list[list[_Row]] = []  # one per listed prompt: its rows (images) in manifest order
        self._group_of: dict[str, int] = {}  # prompt key -> index in _groups
        self._refused: dict[int, str] = {}  # manifest line -> refusal message
        self._index(rows)
        self.validated = bool(validate)
        if self.validated:
            self._validate()

    # ------------------------------------------------------------------ configuration and I/O

    def _open_source(self, spec: GeneratorSpec, manifest_name: str, options: dict[str, Any], client: Any) -> str:
        """Set up the S3 prefix or the local folder; returns the manifest's name inside it."""
        self._bucket: str | None = None
        self._prefix = ""
        self._root: Path | None = None
        self._shown_root: Path | None = None
        self._client = client
        if spec.model.startswith("s3://"):
            bucket, _, prefix = spec.model[len("s3://"):].partition("/")
            if not bucket:
                raise ValueError(f"generator {spec.id!r}: {spec.model!r} names no bucket")
            self._bucket, self._prefix = bucket, prefix.strip("/")
            if self._client is None:
                import boto3

                self._client = boto3.client("s3", endpoint_url=options.get("endpoint_url") or None)
        else:
            root = Path(spec.model)
            if root.is_file():  # the manifest itself was given: the images live next to it
                root, manifest_name = root.parent, root.name
            if not root.is_dir():
                raise FileNotFoundError(f"generator {spec.id!r}: import folder {root} does not exist")
            self._shown_root = root  # as the user named it, for messages
            self._root = root.resolve()  # confinement is checked against the real folder
        return manifest_name

    def _read_manifest(self, manifest_name: str) -> bytes:
        """The manifest's bytes; it must lie inside the source (by name and after symlinks)."""
        spec = self.spec
        if not self._lexically_inside(manifest_name):
            raise ManifestError(
                f"generator {spec.id!r}: import option 'manifest' ({manifest_name!r}) escapes the import folder "
                f"{self._source()}; give a relative path inside it (no '..', not absolute)"
            )
        self.manifest_location = self._describe(manifest_name)
        try:
            return self._read(manifest_name)
        except FileNotFoundError:
            raise FileNotFoundError(f"generator {spec.id!r}: manifest {self.manifest_location} not found") from None
        except OutsideSource:
            raise ManifestError(
                f"generator {spec.id!r}: manifest {self.manifest_location} resolves outside the import folder "
                f"{self._source()} (a symlink leading out?); refused, not read"
            ) from None
        except IsADirectoryError:
            raise ManifestError(f"generator {spec.id!r}: manifest {self.manifest_location} is not a regular file") from None


    @staticmethod
    def _options(spec: GeneratorSpec) -> dict[str, Any]:
        options = dict(spec.params.get("call_kwargs") or {})
        # top-level params too, should GeneratorSpec ever admit these keys
        options.update({k: v for k, v in spec.params.items() if k in IMPORT_OPTIONS})
        unknown = set(options) - IMPORT_OPTIONS
        if unknown:
            raise ValueError(
                f"generator {spec.id!r}: unknown import option(s) {sorted(unknown)}; "
                f"known: {', '.join(sorted(IMPORT_OPTIONS))}"
            )
        return options

    def _source(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._bucket is not None else str(self._shown_root)

    @staticmethod
    def _lexically_inside(rel: str) -> bool:
        return lexically_inside(rel)

    def _local_path(self, rel: str) -> Path:
        """The real path of a file of the folder; `OutsideSource` when it (or a symlink on the way) leads out."""
        assert self._root is not None
        if not self._lexically_inside(rel):
            raise OutsideSource(rel)
        path = (self._root / rel).resolve()  # follows every symlink on the way
        if not path.is_relative_to(self._root):
            raise OutsideSource(rel)
        return path

    def _describe(self, rel: str) -> str:
        if self._bucket is not None:
            return f"s3://{self._bucket}/{self._key(rel)}"
        assert self._shown_root is not None
        return str(self._shown_root / rel)

    def _key(self, rel: str) -> str:
        return f"{self._prefix}/{rel}" if self._prefix else rel

    def _read(self, rel: str) -> bytes:
        """Bytes of a file of the source; FileNotFoundError when it is not there."""
        if self._bucket is None:
            path = self._local_path(rel)
            if not path.exists():
                raise FileNotFoundError(self._describe(rel))
            if not path.is_file():  # a folder, FIFO or device: never opened
                raise IsADirectoryError(f"{self._describe(rel)}: not a regular file")
            return path.read_bytes()
        if not self._lexically_inside(rel):
            raise OutsideSource(rel)
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self._bucket, Key=self._key(rel))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self._describe(rel)) from None
            raise

    # ------------------------------------------------------------------ manifest

    def _parse_manifest(self, raw: bytes) -> list[_Row]:
        where = self.manifest_location
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{where}: not UTF-8 at byte offset {exc.start}; save the manifest as UTF-8"
            ) from None
        # Messages below name the file, line and expected columns only: never text of the file.
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"{where}: empty manifest") from None
        except csv.Error as exc:
            raise ManifestError(f"{where}: line 1: not a valid CSV header ({exc})") from None
        if "file" not in header or not {"prompt", "prompt_id"} & set(header):
            missing = (["'file'"] if "file" not in header else []) + (
                [] if {"prompt", "prompt_id"} & set(header) else ["'prompt' or 'prompt_id'"])
            raise ManifestError(
                f"{where}: line 1: needs a 'file' column and a 'prompt' or 'prompt_id' column; "
                f"the header ({len(header)} column(s)) has no {' and no '.join(missing)} column"
            )
        rows: list[_Row] = []
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ManifestError(f"{where}: line {reader.line_num}: not valid CSV ({exc})") from None
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(header):
                raise ManifestError(f"{where}: line {line}: more fields than the header has columns")
            record = dict(zip(header, (v.strip() for v in values)))
            file = record.get("file", "")
            prompt = _normalise(record.get("prompt", ""))
            prompt_id = record.get("prompt_id", "")
            if not file:
                raise ManifestError(f"{where}: line {line}: empty 'file'")
            if not prompt and not prompt_id:
                raise ManifestError(f"{where}: line {line}: neither 'prompt' nor 'prompt_id' is given")
            posix = PurePosixPath(file.replace("\\", "/"))
            if not self._lexically_inside(file):
                raise ManifestError(
                    f"{where}: line {line}: column 'file' must be a relative path inside the source "
                    "(absolute paths, drive letters and '..' segments are refused)"
                )
            sha = record.get("sha256", "").lower()
            rows.append(_Row(line=line, file=posix.as_posix(), prompt=prompt, prompt_id=prompt_id, sha256=sha,
                             category=record.get("category", "")))
        if not rows:
            raise ManifestError(f"{where}: no rows")
        return rows

    def _index(self, rows: list[_Row]) -> None:
        """Group the rows by prompt (every key of a row maps to its group); a key seen again is a
        duplicate prompt: an error, a skip ("first") or another image of the prompt ("all")."""
        where = self.manifest_location
        for row in rows:
            keys = []
            if row.prompt:
                keys.extend(_prompt_keys(row.prompt))
            if row.prompt_id:
                keys.append(f"id:{row.prompt_id}")
            hits = list(dict.fromkeys(self._group_of[k] for k in keys if k in self._group_of))
            if not hits:
                self._group_of.update({key: len(self._groups) for key in keys})
                self._groups.append([row])
                continue
            group = self._groups[hits[0]]
            message = f"{where}: duplicate prompt on line {row.line} (already on line {group[0].line})"
            if self.on_duplicate == "error":
                raise ManifestError(
                    message + "; remove one row, set on_duplicate='first' to keep the first, or "
                    "on_duplicate='all' to import every row as its own image (several seeds per prompt)"
                )
            if self.on_duplicate == "first":
                LOG.warning("%s; keeping line %d", message, group[0].line)
                self._report._skip(row.line, row.file, DUPLICATE_PROMPT, message)
                continue
            if len(hits) > 1:  # "all", but the row's text and id name two different listed prompts
                raise ManifestError(
                    f"{where}: line {row.line}: its 'prompt' and 'prompt_id' match two different prompts "
                    f"(lines {group[0].line} and {self._groups[hits[1]][0].line}); fix the row"
                )
            same = next((r for r in group if r.file == row.file), None)
            if same is not None:
                message = (f"{where}: line {row.line} lists the file of line {same.line} again for the same "
                           "prompt; not a second image")
                LOG.warning("generator %r: skipping manifest line %d: %s", self.spec.id, row.line, message)
                self._report._skip(row.line, row.file, DUPLICATE_FILE, message)
                continue
            group.append(row)
            for key in keys:
                self._group_of.setdefault(key, hits[0])

    def _unique_rows(self) -> list[_Row]:
        return sorted((row for group in self._groups for row in group), key=lambda r: r.line)

    # ------------------------------------------------------------------ images

    def _load(self, row: _Row) -> tuple[Image.Image, str]:
        name = self._describe(row.file)
        try:
            data = self._read(row.file)
        except FileNotFoundError:
            raise ImageRefused(MISSING_FILE, f"{name}: file not found (manifest line {row.line})") from None
        except OutsideSource:
            raise ImageRefused(
                OUTSIDE_FOLDER, f"{name}: resolves outside the import folder {self._source()} "
                f"(a symlink leading out?); refused, not read (manifest line {row.line})"
            ) from None
        except Exception as exc:  # S3 permission / network errors: this file is unusable, others may not be
            raise ImageRefused(UNREADABLE_FILE, f"{name}: cannot read: {exc}") from exc
        if row.sha256 and hashlib.sha256(data).hexdigest() != row.sha256:
            raise ImageRefused(CHECKSUM_MISMATCH, f"{name}: sha256 does not match manifest line {row.line}")
        return decode_checked(data, name, self.min_side, self.max_pixels)

    def _validate(self) -> None:
        report = self._report
        for row in self._unique_rows():
            try:
                _, mode = self._load(row)
            except ImageRefused as exc:
                if self.strict:
                    raise
                LOG.warning("generator %r: skipping manifest line %d: %s", self.spec.id, row.line, exc)
                report._skip(row.line, row.file, exc.reason, str(exc))
                self._refused[row.line] = f"{exc} [{exc.reason}]"
                continue
            report.imported += 1
            if mode != "RGB":
                report.converted += 1
                report.converted_modes[mode] = report.converted_modes.get(mode, 0) + 1
        if report.imported == 0:
            raise ValueError(
                f"generator {self.spec.id!r}: no usable image in {self.spec.model} "
                f"({report.rows} rows; skipped: {report.skipped})"
            )

    # ------------------------------------------------------------------ generator interface

    def _rows_for(self, prompt: str) -> list[_Row] | None:
        """The prompt's rows in manifest order (None when the manifest does not list it)."""
        index = next((self._group_of[k] for k in _prompt_keys(prompt) if k in self._group_of), None)
        return None if index is None else self._groups[index]

    def _usable(self, prompt: str) -> list[_Row]:
        return [row for row in self._rows_for(prompt) or [] if row.line not in self._refused]

    def image_count(self, prompt: str) -> int:
        """How many usable images the manifest has for the prompt (0 when none or not listed)."""
        return len(self._usable(prompt))

    def has_image(self, prompt: str) -> bool:
        """True when the manifest lists the prompt and at least one of its images passed validation."""
        return self.image_count(prompt) > 0

    def skip_reason(self, prompt: str) -> str | None:
        """Why the prompt's images were refused (None when one is usable or the prompt is not listed)."""
        rows = self._rows_for(prompt)
        if not rows or any(row.line not in self._refused for row in rows):
            return None
        reason = self._refused[rows[0].line]
        return reason if len(rows) == 1 else f"{reason} (and {len(rows) - 1} more image(s) of the prompt refused)"

    def manifest_prompts(self) -> list[dict[str, str]]:
        """The distinct prompt texts of the manifest in order, each {"prompt": text, "category": the
        optional `category` column of its first row, or ""}. A row keyed by `prompt_id` only gives
        no text: `ManifestError` naming the file and line."""
        prompts: dict[str, dict[str, str]] = {}
        for row in self._parsed:
            if not row.prompt:
                raise ManifestError(
                    f"{self.manifest_location}: line {row.line}: keyed by 'prompt_id' only; taking the prompts "
                    "from an import needs the 'prompt' text on every row"
                )
            prompts.setdefault(row.prompt, {"prompt": row.prompt, "category": row.category})
        return list(prompts.values())

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        stop_step: int | None = None,
        batch_size: int | None = None,
        params: dict[str, Any] | None = None,
        indices: list[int] | None = None,
    ) -> list[Image.Image]:
        """The imported RGB image of each prompt: its `indices[i]`-th usable image in manifest order
        (default: the first). Seeds, batch_size and params have no effect."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        if indices is None:
            indices = [0] * len(prompts)
        if len(indices) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(indices)} image indices")
        if stop_step is not None:
            raise ValueError(f"generator {self.spec.id!r}: imported images have no latents to decode prematurely")
        unknown = set(params or {}) - KNOWN_PARAMS
        if unknown:
            raise ValueError(f"generator {self.spec.id!r}: unknown param(s) {sorted(unknown)}")
        rows = []
        for prompt, index in zip(prompts, indices):  # resolve all first: fail before any decoding work
            if self._rows_for(prompt) is None:
                raise KeyError(f"generator {self.spec.id!r}: {self.manifest_location} has no row for prompt {prompt!r}")
            usable = self._usable(prompt)
            if not usable:
                raise ImportSkippedError(
                    f"generator {self.spec.id!r}: the image for prompt {prompt!r} was refused at import: "
                    f"{self.skip_reason(prompt)}"
                )
            if not 0 <= int(index) < len(usable):
                raise IndexError(
                    f"generator {self.spec.id!r}: prompt {prompt!r} has {len(usable)} usable image(s) in "
                    f"{self.manifest_location}; image index {index} is out of range"
                )
            rows.append(usable[int(index)])
        return [self._load(row)[0] for row in rows]

    def model_revision(self) -> str:
        """Hash of the manifest bytes: editing the manifest (or its sha256 column) makes a new revision."""
        return self._revision

    def report(self) -> ImportReport:
        return self._report

    def close(self) -> None:
        """Nothing to release; present for symmetry with the diffusers backend."""
