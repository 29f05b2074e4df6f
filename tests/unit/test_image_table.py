"""The prepared image table (core): shards round-trip bytes, keep one copy of a key, size their row groups for
object storage; prepare's task slices never split an image's captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geomoe.core.data import image_table
from geomoe.core.errors import DatasetError


def test_a_shard_round_trips_bytes_and_keeps_the_first_copy_of_a_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [(f"img/{i}.jpg", rng.bytes(int(rng.integers(0, 3000)))) for i in range(50)]
    location = str(tmp_path / "images" / "part-a.parquet")
    image_table.write_shard(location, [*images, ("img/3.jpg", b"another copy")])
    shard = image_table.read_shard(location)
    assert shard.keys == [k for k, _ in images]
    assert [shard.image(i) for i in range(len(images))] == [data for _, data in images]


def test_row_groups_hold_about_the_target_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_table, "ROW_GROUP_BYTES", 10_000)
    location = tmp_path / "part.parquet"
    image_table.write_shard(str(location), [(str(i), bytes(1000)) for i in range(95)])
    groups = pq.ParquetFile(location).metadata
    assert groups.num_row_groups == 10 and groups.row_group(0).num_rows == 10


def test_locate_over_shards_keeps_the_first_shard_of_a_repeated_key(tmp_path: Path) -> None:
    assert image_table.locate([["a", "b"], ["b", "c"]]) == {"a": (0, 0), "b": (0, 1), "c": (1, 1)}
    with pytest.raises(DatasetError, match="no image shards"):
        image_table.shard_locations(str(tmp_path))


def test_task_slices_cut_only_where_the_image_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    from geomoe.on_ray.pipelines import prepare

    monkeypatch.setattr(prepare, "RECORDS_PER_TASK", 300)
    keys = [f"img{i // 7}" for i in range(2000)]  # seven captions an image
    slices = prepare.record_slices(pa.table({"image_path": keys}), "image_path", concurrency=1)
    assert len(slices) >= 2000 // 300 and sum(len(s) for s in slices) == 2000
    firsts = [s["image_path"][0].as_py() for s in slices]
    lasts = [s["image_path"][-1].as_py() for s in slices]
    assert all(a != b for a, b in zip(lasts, firsts[1:], strict=False))  # no image spans two slices
