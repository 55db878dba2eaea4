"""Artifact stores: a local directory or an S3 bucket, with the same atomic semantics.

Keys are '/'-separated relative paths. A write is never visible half-done: the local backend
writes a temp file and renames it; S3 PUTs are atomic per object, and directory artifacts
(models) publish a `_COMPLETE` marker last, which readers require.
"""

from __future__ import annotations

import io
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from eliq_pipeline.core.atomic import staged_dir, write_bytes

COMPLETE_MARKER = "_COMPLETE"


class ArtifactStore(ABC):
    """Bytes by key, plus helpers for parquet tables and model directories."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def describe(self, key: str) -> str:
        """A human-readable location (path or s3:// URL) for metadata."""

    # Local working copies for libraries that need paths (from_pretrained, safetensors).
    cache_dir: Path

    def put_table(self, key: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.put_bytes(key, buffer.getvalue())

    def get_table(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get_bytes(key)))

    def put_dir(self, local_dir: Path, key: str) -> None:
        """Upload every file of `local_dir`, then the completion marker."""
        self.delete_prefix(key.rstrip("/") + "/")
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                self.put_bytes(f"{key}/{rel}", path.read_bytes())
        self.put_bytes(f"{key}/{COMPLETE_MARKER}", uuid.uuid4().hex.encode())

    def dir_exists(self, key: str) -> bool:
        return self.exists(f"{key}/{COMPLETE_MARKER}")

    def get_dir(self, key: str) -> Path:
        """A local directory holding the artifact (the store itself for the local backend)."""
        if not self.dir_exists(key):
            raise FileNotFoundError(f"artifact directory {self.describe(key)} is missing or incomplete")
        target = self.cache_dir / "dirs" / key
        marker = target / COMPLETE_MARKER
        # The marker holds a fresh id per upload, so a re-materialized artifact invalidates the copy.
        if marker.exists() and marker.read_bytes() == self.get_bytes(f"{key}/{COMPLETE_MARKER}"):
            return target
        prefix = key.rstrip("/") + "/"
        with staged_dir(target, staging_root=self.cache_dir / "staging") as staging:
            staging = staging.resolve()
            for full in self.list_keys(prefix):
                rel = full[len(prefix):]
                dest = (staging / rel).resolve()
                # An object key like "model/../../x" must not write outside the target folder.
                if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts or staging not in dest.parents:
                    raise ValueError(f"artifact directory {self.describe(key)} holds an object key that escapes it: "
                                     f"{full!r}; refusing to download it")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(self.get_bytes(full))
        return target


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.root / ".cache"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key {key!r} escapes the store root {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        write_bytes(self._path(key), data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {self._path(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        start = base if base.is_dir() else base.parent
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            if path.is_file() and not path.name.endswith(".tmp"):
                rel = path.relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    keys.append(rel)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()

    def put_dir(self, local_dir: Path, key: str) -> None:
        # Local backend: copy into a staging dir inside the store, then one atomic rename.
        with staged_dir(self._path(key)) as staging:
            shutil.copytree(local_dir, staging, dirs_exist_ok=True)
            (staging / COMPLETE_MARKER).write_bytes(uuid.uuid4().hex.encode())

    def get_dir(self, key: str) -> Path:
        if not self.dir_exists(key):
            raise FileNotFoundError(f"artifact directory {self._path(key)} is missing or incomplete")
        return self._path(key)

    def describe(self, key: str) -> str:
        return str(self._path(key))


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region_name: str | None = None,
        cache_dir: str | Path = ".eliq/s3-cache",
        client=None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region_name or None)
        self.cache_dir = Path(cache_dir).resolve() / bucket / (self.prefix or "_root")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"artifact {self.describe(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
