"""Shared fixtures: a moto S3 endpoint (server mode) on 127.0.0.1 and a bucket in it, a local Ray
runtime on 127.0.0.1, and one torch thread for the toy-sized model tests."""

from __future__ import annotations

import os
import socket
from typing import Iterator

import pytest


# Ray reads this at import: with it, a local runtime's node IP is 127.0.0.1 and every Ray server
# (GCS, raylet, workers) listens on 127.0.0.1 only, instead of on all interfaces.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto in server mode) listening on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_bucket(s3_endpoint, aws_env):
    import uuid

    import boto3

    name = f"eliq-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Toy-sized ops are dominated by thread hand-off: one intra-op thread is ~10x faster on a
    busy 2-core box. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[str]:
    """A real local Ray runtime (2 CPUs, 2 declared fake GPUs under the custom resource name
    "fake_gpu", never CUDA) started by this test process on 127.0.0.1; yields its GCS address.
    Shut down at the end of the session."""
    import ray

    ray.init(num_cpus=2, resources={"fake_gpu": 2}, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
