"""A write that fails because the store is full leaves nothing that looks finished: the S3 server on 127.0.0.1
behind a pyarrow filesystem with a byte quota (an object appears only when its upload completes, as on S3; a write
past the quota raises ENOSPC), and local disk with a writer that runs out of space mid-file."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from geomoe.core import ownership, storage
from geomoe.core.data.caption_store import write_caption_store
from geomoe.core.storage import StorageError

# captions that do not compress: the store is far over the 4 KiB quota
ROWS = [
    {"image_id": f"img{i}", "caption": os.urandom(200).hex(), "model_id": "m", "prompt_sha256": ""} for i in range(50)
]


class _QuotaUpload(io.RawIOBase):
    """An upload buffered until close, like an S3 PUT; ENOSPC once the filesystem's quota is spent."""

    def __init__(self, handler: QuotaHandler, path: str) -> None:
        self.handler, self.path, self.buffer = handler, path, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.handler.used += len(data)
        if self.handler.used > self.handler.quota:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.buffer.write(data)

    def close(self) -> None:
        if not self.closed and self.handler.used <= self.handler.quota:
            with self.handler.inner.open_output_stream(self.path) as sink:
                sink.write(self.buffer.getvalue())
        super().close()


class QuotaHandler(pafs.FileSystemHandler):
    """Every call goes to ``inner`` (the S3 filesystem); writes count against ``quota`` bytes."""

    def __init__(self, inner: pafs.FileSystem, quota: int) -> None:
        self.inner, self.quota, self.used = inner, quota, 0

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "quota"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("not on a test bucket")

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return pa.PythonFile(_QuotaUpload(self, path), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise OSError("object stores do not append")


@pytest.fixture
def full(s3_bucket: str, s3_server: str) -> Iterator[tuple[str, QuotaHandler]]:
    """The bucket reached through a quota of 4 KiB (the resolved filesystem swapped, as storage caches it)."""
    key = ("s3", s3_bucket.removeprefix("s3://").split("/")[0], os.environ.get("AWS_ENDPOINT_URL", ""))
    real = storage.resolve(s3_bucket).fs
    handler = QuotaHandler(real, 4096)
    storage._FILESYSTEMS[key] = pafs.PyFileSystem(handler)
    try:
        yield s3_bucket, handler
    finally:
        storage._FILESYSTEMS[key] = real


def test_a_file_over_the_quota_is_a_named_error_and_no_object(full: tuple[str, QuotaHandler]) -> None:
    bucket, handler = full
    with pytest.raises(StorageError, match=r"results\.json: .*No space left on device"):
        storage.write_json_atomic(f"{bucket}/run/results.json", {"rows": ["x" * 100] * 100})
    handler.quota = 10**9
    assert not storage.exists(f"{bucket}/run/results.json")


def test_a_folder_cut_off_midway_has_no_manifest_and_the_old_one_is_gone(full: tuple[str, QuotaHandler]) -> None:
    bucket, handler = full
    handler.quota = 10**9
    with ownership.atomic_dir(
        f"{bucket}/index", ownership.Claim("index.output_dir")
    ) as tmp:  # a finished folder, as a previous run left it
        (tmp / "vectors.bin").write_bytes(b"old")
        (tmp / storage.MANIFEST).write_text("{}")
    handler.quota, handler.used = 6000, 0
    with (
        pytest.raises(StorageError, match="No space left on device"),
        ownership.atomic_dir(f"{bucket}/index", ownership.Claim("index.output_dir")) as tmp,
    ):
        for name in ("a.bin", "b.bin", "c.bin"):
            (tmp / name).write_bytes(b"\0" * 2500)
        (tmp / storage.MANIFEST).write_text("{}")
    handler.quota = 10**9
    assert not storage.exists(f"{bucket}/index/{storage.MANIFEST}")  # a reader sees an unfinished folder


def test_a_caption_store_over_the_quota_is_not_written(full: tuple[str, QuotaHandler]) -> None:
    bucket, handler = full
    with pytest.raises(StorageError, match="No space left on device"):
        write_caption_store(f"{bucket}/captions.parquet", ROWS)
    handler.quota = 10**9
    assert not storage.exists(f"{bucket}/captions.parquet")


def test_local_disk_full_mid_file_leaves_the_old_store_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from geomoe.core.data.caption_store import read_caption_store

    write_caption_store(str(tmp_path / "captions.parquet"), ROWS[:1])
    write_table = pq.write_table

    def runs_out_of_space(table: pa.Table, where: Any, **options: Any) -> None:
        write_table(table, where, **options)
        Path(where).write_bytes(Path(where).read_bytes()[:100])  # half of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", runs_out_of_space)
    with pytest.raises(StorageError, match=r"captions\.parquet: .*No space left on device"):
        write_caption_store(str(tmp_path / "captions.parquet"), ROWS)
    assert list(tmp_path.iterdir()) == [tmp_path / "captions.parquet"]  # no temporary left behind
    assert list(read_caption_store(tmp_path / "captions.parquet")) == ["img0"]  # the old store, intact
