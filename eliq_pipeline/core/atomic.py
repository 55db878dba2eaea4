"""Atomic publishing: build a file or folder beside its target, then one rename puts it in place.

A reader (or a run resumed after SIGKILL) sees the old version or the new one, never half of one;
a failure leaves the target as it was and removes the staging copy. Staging names start with '.'
and end with '.tmp' so that listings and globs skip them.

Hand-written because the one library for this (`atomicwrites`) is archived and handles files
only; replacing a whole folder (models, bundles, checkpoints) is the common case here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write; on a clean exit it is synced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished folder `staging` at `target`; an existing target is moved aside first and
    removed after, so the name never points at a half-deleted folder."""
    if target.exists():
        old = target.with_name(f".{target.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextmanager
def staged_dir(target: str | Path, staging_root: str | Path | None = None) -> Iterator[Path]:
    """An empty folder to fill; on a clean exit it replaces `target` (see `replace_dir`).
    `staging_root` must be on the same filesystem as `target` (default: target's parent)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    root = Path(staging_root) if staging_root is not None else target.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
