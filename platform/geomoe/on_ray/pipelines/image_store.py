"""A prepared dataset's image bytes for Ray workers: the ``images/`` table (``geomoe.core.data.image_table``) loaded
once per stage into Ray's object store, then read by every decoding task and embedding actor from there.

Each shard is read by one Ray task (a few large requests to the storage), and its bytes stay in the object store
as numpy arrays: a worker's ``ray.get`` maps them without a copy on its own node, and a node fetches a shard from
another node once. An epoch, mining or an evaluation then makes no storage request per image. The object store
holds the encoded bytes (GeoText-1652's ~3 GB at most), never decoded pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from geomoe.core import storage
from geomoe.core.data import image_table
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import DatasetError


def _load_shard(location: str) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
    shard = image_table.read_shard(location)
    return shard.keys, (shard.offsets, shard.buffer)


class ImageBytes:
    """Picklable ``fetch(keys) -> [bytes]`` over shards in the object store (``DecodeImages``, ``DecodePairs`` and
    ``ImageEmbedder`` take it). ``where``: key -> (shard, row)."""

    def __init__(self, shards: list[Any], where: dict[str, tuple[int, int]], table: str) -> None:
        self.shards, self.where, self.table = shards, where, table

    def __call__(self, keys: Sequence[str]) -> list[bytes]:
        import ray

        try:
            places = [self.where[str(k)] for k in keys]
        except KeyError as err:
            raise DatasetError(f"image {err.args[0]!r} is not in {storage.redact(self.table)}") from None
        needed = sorted({shard for shard, _ in places})
        arrays = dict(zip(needed, ray.get([self.shards[s] for s in needed]), strict=True))
        return [arrays[s][1][arrays[s][0][row] : arrays[s][0][row + 1]].tobytes() for s, row in places]


def load_image_bytes(table: str) -> ImageBytes:
    """Every shard of the image table at ``table``, read by Ray tasks into the object store."""
    import ray

    # no CPU asked: a read waits on storage, and inside a Tune trial the task must fit the trial's placement group
    load = ray.remote(num_cpus=0, num_returns=2, max_retries=3)(_load_shard)
    pairs: list[Any] = [load.remote(location) for location in image_table.shard_locations(table)]
    keys = ray.get([k for k, _ in pairs])  # the keys come to the driver; the bytes stay in the object store
    return ImageBytes([data for _, data in pairs], image_table.locate(keys), table)


class PreparedImages:
    """A prepared dataset's image bytes, loaded on first use (a stage whose results are all recorded loads none).
    ``fetch`` is None for a dataset prepared without an image table: readers then read each path."""

    def __init__(self, prepared: PreparedDataset) -> None:
        self.prepared = prepared

    @cached_property
    def fetch(self) -> ImageBytes | None:
        table = self.prepared.images
        return None if table is None else load_image_bytes(table)
