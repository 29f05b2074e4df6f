"""Image bytes in Parquet (core, no Ray): the prepared dataset's ``images/`` table, so that training and
embedding read a few large files instead of one object per image per epoch (WebDataset's idea, in Parquet).

Each row is one image: ``key`` (the path the prepared rows name it by: the source file, or the virtual path of a
satellite copy made by prepare) and ``data`` (its encoded bytes, as read or as prepare encoded them: lossless).
Shards are written by prepare's tasks, one per batch of records; row groups hold about ``ROW_GROUP_BYTES``, a
size an object store serves in a few ranged GETs. A key may appear in two shards (an image whose captions span a
batch boundary): the bytes are the same, and a reader keeps the first.

A shard in memory is ``Shard``: the keys, and the bytes as one uint8 buffer with offsets, the form that numpy
(and Ray's object store, zero-copy) holds without a Python object per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geomoe.core import storage
from geomoe.core.errors import DatasetError

FOLDER = "images"
ROW_GROUP_BYTES = 64 << 20
SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("data", pa.large_binary(), nullable=False)])


def write_shard(location: str, images: Iterable[tuple[str, bytes]]) -> None:
    """Write one shard atomically (first occurrence of each key kept). Row groups of about ``ROW_GROUP_BYTES``: a
    reader fetches a group in a few large requests."""
    keys: list[str] = []
    blobs: list[bytes] = []
    seen: set[str] = set()
    for key, data in images:
        if key not in seen:
            seen.add(key)
            keys.append(key)
            blobs.append(data)
    table = pa.table({"key": pa.array(keys, pa.string()), "data": pa.array(blobs, pa.large_binary())}, schema=SCHEMA)
    mean = max(1, sum(map(len, blobs)) // max(1, len(blobs)))
    with storage.atomic_path(location, ".parquet") as tmp:
        # images are already compressed (JPEG/PNG): Parquet compression would cost CPU for nothing
        pq.write_table(table, tmp, row_group_size=max(1, ROW_GROUP_BYTES // mean), compression="NONE")


@dataclass(frozen=True)
class Shard:
    """One shard's images: ``keys``, and image i's bytes at ``buffer[offsets[i]:offsets[i + 1]]``."""

    keys: list[str]
    offsets: np.ndarray
    buffer: np.ndarray

    def image(self, row: int) -> bytes:
        return self.buffer[self.offsets[row] : self.offsets[row + 1]].tobytes()


def read_shard(location: str) -> Shard:
    """A whole shard (one request per row group on an object store: Parquet's ranged reads)."""
    fs, path = storage.filesystem_and_path(location)
    try:
        table = pq.read_table(path, filesystem=fs, schema=SCHEMA)
    except (OSError, ValueError) as err:
        raise storage.storage_error(location, err) from err
    data = pa.chunked_array(table["data"]).combine_chunks()
    offsets = np.frombuffer(data.buffers()[1], np.int64)[data.offset : data.offset + len(data) + 1]
    buffer = np.frombuffer(data.buffers()[2], np.uint8) if len(data) else np.zeros(0, np.uint8)
    return Shard(table["key"].to_pylist(), offsets, buffer)


def shard_locations(table: str) -> list[str]:
    """The shards of an image table folder, in name order (one listing)."""
    names = sorted(rel for rel, _ in storage.list_files(table) if rel.endswith(".parquet"))
    if not names:
        raise DatasetError(f"{storage.redact(table)}: no image shards; run 'prepare' again (preprocess.force: true)")
    return [storage.join(table, name) for name in names]


def shard_name(first_source: str, first_record: int) -> str:
    """A batch's shard, named by its first record: a retried task rewrites the same file."""
    return f"part-{storage.text_sha256(f'{first_source}#{first_record}')[:16]}.parquet"


def locate(shard_keys: list[list[str]]) -> dict[str, tuple[int, int]]:
    """key -> (shard, row) over all shards; the first occurrence of a key wins."""
    where: dict[str, tuple[int, int]] = {}
    for shard, keys in enumerate(shard_keys):
        for row, key in enumerate(keys):
            where.setdefault(key, (shard, row))
    return where
