"""Caption store: captions of gallery images written once, offline, and read at re-ranking time (CGRS).

Parquet, one row per (image, caption): image_id, caption, model_id (the captioner), prompt_sha256 (the prompt
it was given; empty for captioners without one). Written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geomoe.core import ownership, storage
from geomoe.core.errors import DatasetError

CAPTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("prompt_sha256", pa.string(), nullable=False),
    ]
)


REPORT_KEY = b"geomoe.caption_report"


def write_caption_store(
    path: str, rows: Iterable[dict[str, str]], report: dict[str, Any] | None = None, key: str = "caption.output"
) -> str:
    """Write the store (a path or URI); ``report`` (the captioning run's, with its inputs key) goes into the
    file's metadata. An existing file is replaced only if it is a caption store (``key``: the spec key a refusal
    names)."""
    ownership.check_file(path, key, is_caption_store)
    schema = CAPTION_SCHEMA.with_metadata({REPORT_KEY: json.dumps(report or {})})
    table = pa.Table.from_pylist(list(rows), schema=schema)
    with storage.atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return str(path)


def is_caption_store(path: str) -> bool:
    """True for a Parquet file geomoe wrote as a caption store (its metadata carries the captioning report)."""
    return caption_store_report(path) is not None


def caption_store_report(path: str | Path) -> dict[str, Any] | None:
    """The report saved with a store (None when there is no readable store)."""
    try:
        fs, inner = storage.filesystem_and_path(path)
        metadata = pq.read_schema(inner, filesystem=fs).metadata or {}
        return dict(json.loads(metadata[REPORT_KEY])) if REPORT_KEY in metadata else None
    except (OSError, ValueError, pa.ArrowException, storage.StorageError):
        return None


def read_caption_store(path: str | Path) -> dict[str, list[str]]:
    """image_id -> its captions. A missing file, a wrong schema or an empty caption is an error naming it."""
    path = storage.redact(path)
    if not storage.is_file(path):
        raise DatasetError(f"{path}: caption store not found")
    try:
        fs, inner = storage.filesystem_and_path(path)
        table = pq.read_table(inner, filesystem=fs)
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
