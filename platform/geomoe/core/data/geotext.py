"""GeoText-1652 on disk (docs/datasets.md): images/<split>/<building>/<file>, train.json, test JSON.

train.json: one entry per (image, caption) with optional ``sentences`` and ``bboxes``.
test JSON: one entry per image with ``caption`` a list. Both become one RetrievalRecord per caption.
There is no platform field: it is inferred from the file name by ordered ``PlatformRule`` regexes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomoe.core import storage
from geomoe.core.data.records import RejectLog, RetrievalRecord
from geomoe.core.errors import DatasetError


class PlatformClassifier:
    """Ordered (regex, platform) rules over the image file name; first full match wins."""

    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self._rules = [(re.compile(pattern), platform) for pattern, platform in rules]

    def __call__(self, image_id: str) -> str | None:
        name = image_id.rsplit("/", 1)[-1]
        for pattern, platform in self._rules:
            if pattern.fullmatch(name):
                return platform
        return None


def load_json_list(path: str) -> list[Any]:
    if not storage.is_file(path):
        raise DatasetError(f"{storage.redact(path)}: file not found")
    try:
        data = json.loads(storage.read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"wrong type: entry is {type(entry).__name__}, expected an object"
    for key in ("image_id", "image"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"wrong type: field '{key}' must be a non-empty string"
    if len(entry["image_id"]) < 4:
        return f"bad field 'image_id': {entry['image_id']!r} is shorter than the 4-character building id"
    caption = entry.get("caption")
    if not (isinstance(caption, str) or (isinstance(caption, list) and all(isinstance(c, str) for c in caption))):
        return "wrong type: field 'caption' must be a string or a list of strings"
    sentences = entry.get("sentences")
    if sentences is not None and not (isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)):
        return "wrong type: field 'sentences' must be null or a list of strings"
    return None


def _duplicate(entry: dict[str, Any], index: int, seen: dict[tuple[str, str | None], int]) -> str | None:
    """A test entry (one per image, captions in a list) naming an image an earlier entry named, or a train entry
    repeating an earlier (image, caption): either would count an image twice in the gallery or the loss."""
    caption = entry["caption"]
    key = (entry["image"], None if isinstance(caption, list) else caption)
    if key in seen:
        what = "image" if isinstance(caption, list) else "image and caption"
        return f"duplicate {what}: {entry['image']!r} as in entry {seen[key]}"
    seen[key] = index
    return None


def read_geotext(
    root: str | Path,
    split: str,
    annotation_file: str,
    classify: PlatformClassifier,
    rejects: RejectLog,
    images_listing: list[tuple[str, int]] | None = None,
) -> list[RetrievalRecord]:
    """Read one GeoText-1652 annotation file into records; bad entries go to ``rejects``.

    Image files are checked for existence here against one listing of the images folder (one request per
    thousand objects on a store, not one per image; ``images_listing`` when the caller listed it already);
    decoding is left to the pipeline's workers.
    """
    root = storage.absolute(root)
    path = storage.join(root, annotation_file)
    images = storage.join(root, "images")
    present = {rel for rel, _ in (storage.list_files(images) if images_listing is None else images_listing)}
    records: list[RetrievalRecord] = []
    seen: dict[tuple[str, str | None], int] = {}
    for index, entry in enumerate(load_json_list(path)):
        problem = _entry_problem(entry)
        platform = classify(entry["image_id"]) if problem is None else None
        if problem is None and platform is None:
            problem = f"unknown platform: file name of {entry['image_id']!r} matches no platform rule"
        image_path = storage.join(images, entry["image"]) if problem is None else None
        if image_path is not None and entry["image"] not in present:
            problem = f"missing image: {storage.redact(image_path)}"
        problem = problem or _duplicate(entry, index, seen)  # only accepted entries count as seen
        if problem is not None:
            rejects.reject(storage.redact(path), index, problem, split)
            continue
        assert image_path is not None and platform is not None
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        for caption_index, caption in enumerate(captions):
            if not caption.strip():
                rejects.reject(storage.redact(path), f"{index} caption {caption_index}", "empty caption", split)
                continue
            records.append(
                RetrievalRecord(
                    image_path=image_path,
                    image_id=entry["image_id"],
                    building_id=entry["image_id"][:4],
                    platform=platform,
                    caption=caption,
                    split=split,
                    caption_index=caption_index,
                    sentences=entry.get("sentences"),
                    source=storage.redact(path),
                    record=index,
                )
            )
    return records


def write_geotext_annotations(root: str | Path, file_name: str, entries: list[dict[str, Any]]) -> Path:
    """Write an annotation file in the GeoText-1652 layout (atomically)."""
    path = Path(root) / file_name
    storage.write_json_atomic(path, entries)
    return path
