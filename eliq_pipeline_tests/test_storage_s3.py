import boto3
import pyarrow as pa
import pytest

from eliq_pipeline.storage import S3ArtifactStore


def test_s3_store_round_trips_through_a_real_endpoint(s3_endpoint, s3_bucket, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    store = S3ArtifactStore(s3_bucket, prefix="p", cache_dir=tmp_path / "cache", client=client)
    store.put_bytes("a/b.bin", b"hello")
    assert store.exists("a/b.bin") and not store.exists("a/missing")
    assert store.get_bytes("a/b.bin") == b"hello"
    assert client.get_object(Bucket=s3_bucket, Key="p/a/b.bin")["Body"].read() == b"hello"
    store.put_table("t.parquet", pa.table({"x": [1]}))
    assert store.get_table("t.parquet").to_pylist() == [{"x": 1}]
    with pytest.raises(FileNotFoundError, match="s3://"):
        store.get_bytes("nope")


def test_s3_dir_is_invisible_until_complete_and_refreshes_when_replaced(s3_endpoint, s3_bucket, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    store = S3ArtifactStore(s3_bucket, cache_dir=tmp_path / "cache", client=client)
    store.put_bytes("m/w.bin", b"partial")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        store.get_dir("m")
    source = tmp_path / "src"
    source.mkdir()
    (source / "w.bin").write_bytes(b"v1")
    store.put_dir(source, "m")
    assert (store.get_dir("m") / "w.bin").read_bytes() == b"v1"
    (source / "w.bin").write_bytes(b"v2")
    store.put_dir(source, "m")
    assert (store.get_dir("m") / "w.bin").read_bytes() == b"v2"  # the local copy is refreshed
