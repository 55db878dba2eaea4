"""Artifact store resource: local directory (default) or S3 through dagster-aws's S3Resource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from eliq_pipeline.core.storage import ArtifactStore, LocalArtifactStore, S3ArtifactStore


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where images, checkpoints, embedding shards and tables are written."""

    backend: str = "local"  # "local" or "s3"
    root: str = ".eliq/artifacts"  # local backend root; also the local cache for S3 downloads
    bucket: str = ""
    prefix: str = "eliq"
    s3_endpoint_url: str = ""  # e.g. a MinIO or moto endpoint; empty means AWS
    s3_region: str = "us-east-1"

    def store(self) -> ArtifactStore:
        if self.backend == "local":
            return LocalArtifactStore(self.root)
        if self.backend == "s3":
            if not self.bucket:
                raise ValueError("artifact store backend 's3' needs a bucket (ELIQ_S3_BUCKET)")
            return S3ArtifactStore(
                bucket=self.bucket,
                prefix=self.prefix,
                cache_dir=Path(self.root) / ".s3-cache",
                client=self.s3_client(),
            )
        raise ValueError(f"unknown artifact store backend {self.backend!r}; use 'local' or 's3'")

    def s3_client(self) -> Any:
        """A boto3 S3 client on this store's endpoint and region, built by dagster-aws (credentials,
        retries); also what `import` generators reading an `s3://` source use."""
        return S3Resource(endpoint_url=self.s3_endpoint_url or None, region_name=self.s3_region).get_client()
