"""Caption store: captions of gallery images written once, offline, and read at re-ranking time (CGRS).

Parquet, one row per (image, caption): image_id, caption, model_id (the captioner), prompt_sha256 (the prompt
it was given; empty for captioners without one). Written atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geomoe.errors import DatasetError
from geomoe.io import atomic_path

CAPTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("prompt_sha256", pa.string(), nullable=False),
    ]
)


def write_caption_store(path: str | Path, rows: Iterable[dict[str, str]]) -> Path:
    path = Path(path)
    table = pa.Table.from_pylist(list(rows), schema=CAPTION_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_caption_store(path: str | Path) -> dict[str, list[str]]:
    """image_id -> its captions. A missing file, a wrong schema or an empty caption is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: caption store not found")
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise DatasetError(f"{path}: not a readable Parquet caption store: {err}") from err
    missing = [f.name for f in CAPTION_SCHEMA if f.name not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: caption store lacks column(s) {missing}")
    captions: dict[str, list[str]] = {}
    for index, (image_id, caption) in enumerate(
        zip(table["image_id"].to_pylist(), table["caption"].to_pylist(), strict=True)
    ):
        if not caption or not str(caption).strip():
            raise DatasetError(f"{path}: row {index} (image {image_id!r}): empty caption")
        captions.setdefault(str(image_id), []).append(str(caption))
    return captions
