import boto3
import pyarrow as pa
import pytest

from eliq_pipeline.core.storage import S3ArtifactStore


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


@pytest.mark.parametrize("evil", ["m/../../../escaped.bin", "m/sub/../../../../escaped.bin"])
def test_s3_dir_with_an_escaping_object_key_writes_nothing_outside(s3_endpoint, s3_bucket, tmp_path, evil):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    store = S3ArtifactStore(s3_bucket, cache_dir=tmp_path / "cache", client=client)
    source = tmp_path / "src"
    source.mkdir()
    (source / "w.bin").write_bytes(b"v1")
    store.put_dir(source, "m")
    client.put_object(Bucket=s3_bucket, Key=evil, Body=b"planted")  # S3 keys may hold '..' segments
    with pytest.raises(ValueError, match=r"escapes it: .*escaped\.bin"):
        store.get_dir("m")
    assert [p for p in tmp_path.rglob("escaped.bin")] == []
    assert list((tmp_path / "cache").rglob("staging/*")) == []  # the half-downloaded copy is gone
