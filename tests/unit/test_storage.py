"""The storage layer against local disk and a real S3 HTTP API on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec, StorageSpec, parse_spec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import DatasetError, GeomoeError, SpecError

CLAIM = ownership.Claim("index.output_dir", "test", "index")


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A location to write under: a local folder, or a fresh bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "root")
    return str(request.getfixturevalue("s3_bucket")) + "/root"


def test_files_round_trip_and_list(root: str) -> None:
    storage.write_json_atomic(storage.join(root, "a", "b.json"), {"x": [1, 2]})
    storage.write_bytes_atomic(storage.join(root, "c.bin"), b"\x00\x01")
    assert storage.read_json(storage.join(root, "a", "b.json")) == {"x": [1, 2]}
    assert storage.read_head(storage.join(root, "c.bin"), 1) == b"\x00"
    assert storage.list_files(root) == [("a/b.json", 30), ("c.bin", 2)]
    assert storage.is_dir(root) and storage.is_file(storage.join(root, "c.bin"))
    assert storage.read_json_if_exists(storage.join(root, "nothing.json")) is None
    with storage.open_input(storage.join(root, "c.bin")) as handle:
        assert handle.read() == b"\x00\x01"
    storage.delete(storage.join(root, "a"))
    assert storage.list_files(root) == [("c.bin", 2)]


def test_failed_write_publishes_nothing(root: str) -> None:
    target = storage.join(root, "out.json")
    storage.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), storage.atomic_path(target) as tmp:
        tmp.write_text('{"v": 2')  # half written
        raise RuntimeError("crash mid-write")
    assert storage.read_json(target) == {"v": 1}
    folder = storage.join(root, "index")
    with ownership.atomic_dir(folder, CLAIM) as tmp:
        (tmp / "vectors.bin").write_bytes(b"old")
        (tmp / storage.MANIFEST).write_text("{}")
    with pytest.raises(RuntimeError), ownership.atomic_dir(folder, CLAIM) as tmp:
        (tmp / "vectors.bin").write_bytes(b"new")
        raise RuntimeError("crash before the manifest")
    assert storage.read_bytes(storage.join(folder, "vectors.bin")) == b"old"
    assert storage.is_file(storage.join(folder, storage.MANIFEST))


def test_folder_is_replaced_and_round_trips(root: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "x.txt").write_text("x")
    (source / storage.MANIFEST).write_text("{}")
    ownership.upload_dir(source, storage.join(root, "copy"), CLAIM)
    ownership.upload_dir(source, storage.join(root, "copy"), CLAIM)  # replaced, not merged or duplicated
    listed = storage.list_files(storage.join(root, "copy"))
    assert [rel for rel, _ in listed] == [storage.OWNER_FILE, storage.MANIFEST, "sub/x.txt"]
    assert storage.read_text(storage.join(root, "copy", "sub", "x.txt")) == "x"
    assert storage.tree_sha256(storage.join(root, "copy")) == storage.tree_sha256(source)


def test_uri_helpers() -> None:
    assert storage.join("s3://b/runs", "x", "y.json") == "s3://b/runs/x/y.json"
    assert storage.parent("s3://b/runs/x/") == "s3://b/runs"
    assert storage.absolute("s3://b/k") == "s3://b/k"
    assert storage.absolute("rel", "/base") == "/base/rel"
    assert storage.redact("s3://AKIA:secret@bucket/key") == "s3://bucket/key"
    assert storage.is_local("file:///tmp/x") and not storage.is_local("gs://b/x")


def test_uri_with_credentials_is_refused_in_a_spec(tmp_path: Path) -> None:
    raw = {
        "name": "j",
        "output_root": "s3://AKIA123:hunter2@bucket/runs",
        "data": {"format": "geotext", "root": str(tmp_path)},
        "preprocess": {"output_dir": str(tmp_path / "p")},
    }
    with pytest.raises(SpecError, match="output_root: a URI carries credentials") as info:
        parse_spec(JobSpec, raw, "job.yaml")
    assert "hunter2" not in str(info.value)


def test_shared_mounts_declare_local_paths() -> None:
    spec = StorageSpec(shared_mounts=["/mnt/efs"])
    assert spec.is_shared("/mnt/efs/runs") and spec.is_shared("s3://b/runs")
    assert not spec.is_shared("/home/me/runs") and not spec.is_shared("/mnt/efs2/runs")
    assert StorageSpec(shared=True).is_shared("/anywhere")


def _message(fn: Any) -> str:
    with pytest.raises(GeomoeError) as info:
        fn()
    return str(info.value)


def test_storage_errors_name_the_uri(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"{s3_bucket}/no/such.json"
    assert _message(lambda: storage.read_json(missing)) == f"{missing}: no such file or folder"
    assert _message(lambda: storage.read_bytes("s3://no-such-bucket-geomoe/x.json")) == (
        "s3://no-such-bucket-geomoe/x.json: the bucket does not exist"
    )
    unfinished = f"{s3_bucket}/prepared"
    storage.write_bytes_atomic(f"{unfinished}/pairs/part-0.parquet", b"not yet published")
    assert "manifest.json missing" in _message(lambda: PreparedDataset.open(unfinished, "stage 'train'"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    message = _message(lambda: storage.read_bytes(f"{s3_bucket}/x.json"))
    assert message == f"{s3_bucket}/x.json: cannot reach the storage endpoint (AWS_ENDPOINT_URL=http://127.0.0.1:9)"


def test_wrong_credentials_are_named(s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks signatures once its auth is on (its /moto-api/reset-auth); our keys are then unknown to it."""
    import urllib.request

    def auth_after(count: int) -> None:
        url, body = f"{s3_server}/moto-api/reset-auth", str(count).encode()
        urllib.request.urlopen(urllib.request.Request(url, body, headers={"Content-Type": "text/plain"}))

    auth_after(0)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY")
        storage._FILESYSTEMS.clear()  # a new client with the new credentials
        message = _message(lambda: storage.read_bytes(f"{s3_bucket}/x.json"))
    finally:
        auth_after(1_000_000_000)
        storage._FILESYSTEMS.clear()
    assert message.startswith(f"{s3_bucket}/x.json: access denied") and "AWS_ACCESS_KEY_ID" in message
    assert "AKIAWRONGKEY" not in message and os.environ["AWS_SECRET_ACCESS_KEY"] not in message


def test_prepared_dataset_on_s3_reads_one_split(s3_bucket: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"caption": ["a", "b"], "augment": ["", "x"]})
    for split in ("train", "test"):
        with storage.atomic_path(f"{s3_bucket}/p/pairs/split={split}/part-0.parquet") as tmp:
            pq.write_table(table, tmp)
    manifest = {"kind": "retrieval", "table": f"{s3_bucket}/p/pairs"}
    storage.write_json_atomic(f"{s3_bucket}/p/{storage.MANIFEST}", manifest)
    prepared = PreparedDataset.open(f"{s3_bucket}/p")
    assert prepared.read_split("test", ["caption", "split"]).to_pylist() == [
        {"caption": "a", "split": "test"},
        {"caption": "b", "split": "test"},
    ]
    import pyarrow.compute as pc

    assert prepared.read_split("train", ["caption"], where=pc.field("augment") == "").num_rows == 1
    with pytest.raises(DatasetError, match="needs a localization dataset"):
        prepared.require("localization", "an SMGeo job")


def test_an_index_in_s3_is_served_from_a_verified_local_cache(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from geomoe.families.pe_moe.index import read_index, write_index

    rows = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float16)
    ids = [f"img{i}" for i in range(5)]
    write_index(tmp_path / "local", rows, ids, {"checkpoint": "c"})
    write_index(f"{s3_bucket}/index", rows, ids, {"checkpoint": "c"})
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOMOE_CACHE", str(cache))  # restored afterwards, whatever the user had set
    remote = read_index(f"{s3_bucket}/index")
    assert len(list(cache.iterdir())) == 1  # one copy, keyed by the manifest's hash
    again = read_index(f"{s3_bucket}/index")  # reused: nothing downloaded again
    assert len(list(cache.iterdir())) == 1 and np.array_equal(np.asarray(again.rows), rows)
    local = read_index(tmp_path / "local")
    assert remote.ids == local.ids and np.array_equal(np.asarray(remote.rows), np.asarray(local.rows))
    query = np.ones((1, 8), np.float32)
    assert remote.search(query, 3) == local.search(query, 3)

    storage.write_bytes_atomic(f"{s3_bucket}/index/ids.json", b'["tampered"]')  # the manifest is unchanged
    storage.delete(str(cache))
    with pytest.raises(storage.StorageError, match=r"index/ids.json: content hash differs"):
        read_index(f"{s3_bucket}/index")
    assert not cache.exists() or not any((p / storage.MANIFEST).exists() for p in cache.iterdir())


def test_an_error_is_classified_by_its_kind_not_by_digits_in_the_bucket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket whose random suffix held "403" once turned an unreachable endpoint into "access denied"."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    where = "s3://errors-a4031b/x.json"
    unreachable = OSError(
        "When reading information for key 'x.json' in bucket 'errors-a4031b': AWS Error NETWORK_CONNECTION during "
        "HeadObject operation: curlCode: 7, Couldn't connect to server"
    )
    denied = OSError("When reading information for key 'x.json' in bucket 'errors-a4031b': AWS Error ACCESS_DENIED")
    status = OSError("When reading information for key 'x.json' in bucket 'b': HTTP status 403")
    assert str(storage.storage_error(where, unreachable)).endswith(
        "cannot reach the storage endpoint (AWS_ENDPOINT_URL=http://127.0.0.1:9)"
    )
    for err in (denied, status):
        assert "access denied" in str(storage.storage_error(where, err))
