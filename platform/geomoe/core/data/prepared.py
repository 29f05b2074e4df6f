"""The typed hand-off between ``prepare`` (or ``refine``) and every later stage (core, no Ray).

A prepared dataset is a folder whose ``manifest.json`` (written last) names its Parquet table: hive-partitioned
shards by split (and platform, for retrieval). The table is a location (local path or URI) read through its
own ``pyarrow.fs`` filesystem, so a stage on another machine reads what ``prepare`` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from geomoe.core import storage
from geomoe.core.errors import DatasetError


@dataclass(frozen=True)
class PreparedDataset:
    """A finished prepare or refine output: where it is, and its manifest."""

    location: str
    manifest: dict[str, Any]

    @classmethod
    def find(cls, folder: str) -> PreparedDataset | None:
        """The finished dataset in ``folder``, or None when it has no manifest (absent or unfinished)."""
        manifest = storage.read_json_if_exists(storage.join(folder, storage.MANIFEST))
        return None if manifest is None else cls(folder, dict(manifest))

    @classmethod
    def open(cls, folder: str, needed_by: str = "this stage") -> PreparedDataset:
        found = cls.find(folder)
        if found is None:
            raise DatasetError(
                f"{storage.redact(folder)}: no finished prepared dataset ({storage.MANIFEST} missing); "
                f"{needed_by} needs one: run 'prepare' first"
            )
        return found

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> PreparedDataset:
        """From a manifest already in hand (a stage result)."""
        return cls(str(manifest.get("location") or storage.parent(manifest["table"])), manifest)

    @property
    def kind(self) -> str:
        """ "retrieval" (GeoText-style pairs) or "localization" (CVOGL-style samples)."""
        return str(self.manifest.get("kind", ""))

    @property
    def table(self) -> str:
        return str(self.manifest["table"])

    @property
    def images(self) -> str | None:
        """The image table (``geomoe.core.data.image_table``) every row's image is in; None for a dataset prepared
        before there was one (readers then read each image's path)."""
        images = self.manifest.get("images")
        return str(images["table"]) if images else None

    def dataset(self) -> pads.Dataset:
        fs, path = storage.filesystem_and_path(self.table)
        try:
            return pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
        except (OSError, ValueError) as err:
            raise storage.storage_error(self.table, err) from err

    def read_split(self, split: str, columns: list[str] | None = None, where: Any = None) -> pa.Table:
        """The rows of one split (``columns`` only; ``where`` an extra pyarrow.dataset filter expression)."""
        condition = pc.field("split") == split
        if where is not None:
            condition = condition & where
        try:
            return self.dataset().to_table(columns=columns, filter=condition)
        except (OSError, ValueError) as err:
            raise storage.storage_error(self.table, err) from err

    def require(self, kind: str, stage: str) -> PreparedDataset:
        if self.kind != kind:
            wanted = "data.format: geotext" if kind == "retrieval" else "data.format: cvogl"
            raise DatasetError(f"{stage} needs a {kind} dataset ({wanted}); {self.location} holds {self.kind!r}")
        return self
