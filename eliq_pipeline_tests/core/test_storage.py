import pyarrow as pa
import pytest

from eliq_pipeline.core.storage import COMPLETE_MARKER, LocalArtifactStore


def test_local_store_round_trips_bytes_tables_and_dirs(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    store.put_bytes("a/b.bin", b"xyz")
    assert store.get_bytes("a/b.bin") == b"xyz" and store.exists("a/b.bin")
    table = pa.table({"x": [1, 2]})
    store.put_table("t.parquet", table)
    assert store.get_table("t.parquet").equals(table)
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.safetensors").write_bytes(b"w")
    store.put_dir(source, "models/m")
    local = store.get_dir("models/m")
    assert (local / "sub" / "w.safetensors").read_bytes() == b"w" and (local / COMPLETE_MARKER).exists()
    assert store.list_keys("models/m/") == ["models/m/_COMPLETE", "models/m/sub/w.safetensors"]


def test_local_store_leaves_no_partial_file_when_a_write_fails(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)
    store.put_bytes("x.bin", b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        store.put_bytes("x.bin", b"new")
    monkeypatch.undo()
    assert store.get_bytes("x.bin") == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_incomplete_dir_is_not_readable(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put_bytes("models/m/weights.bin", b"half")  # no completion marker
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        store.get_dir("models/m")


def test_keys_cannot_escape_the_root(tmp_path):
    store = LocalArtifactStore(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        store.put_bytes("../evil", b"")
