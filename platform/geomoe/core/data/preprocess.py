"""Per-row preprocessing of canonical records (core, no Ray): the work ``pipelines.prepare`` distributes.

For each retrieval row: read the image once and decode-check it, normalise the caption (train and test word
limits), split it into short statements; with ``refine: rules``, rewrite training captions for their platform
first (``geomoe.core.data.refine_rules``); for satellite training rows, sanitise the caption (directional sentences
removed) and only then make ``satellite_copies`` geometrically/photometrically augmented copies of the image.
Every output row carries a ``reject`` reason; empty means the row is good. The bytes of every image a good row
names (satellite copies included: they exist nowhere else) go into one shard of the image table per batch
(``geomoe.core.data.image_table``).
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import pyarrow as pa

from geomoe.core import storage
from geomoe.core.config import PreprocessSpec
from geomoe.core.data import image_table
from geomoe.core.data.images import DECODE_ERRORS, bytes_problem, decoded_or_error, header_size
from geomoe.core.data.refine_rules import FramingRules, load_rules
from geomoe.core.data.transforms import (
    DEFAULT_DIRECTIONAL_PHRASES,
    SatelliteAugment,
    directional_matcher,
    prepare_caption,
)

PREPARED_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("building_id", pa.string()),
        pa.field("platform", pa.string()),
        pa.field("split", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("caption_raw", pa.string()),
        pa.field("statements", pa.list_(pa.string())),
        pa.field("caption_index", pa.int32()),
        pa.field("augment", pa.string()),
        pa.field("source", pa.string()),
        pa.field("record", pa.int64()),
        pa.field("reject", pa.string()),
    ]
)
# the key prefix of satellite copies: their image_path is "augmented/<name>.jpg", only in the image table
AUGMENTED = "augmented"
_KEPT = ("image_path", "image_id", "building_id", "platform", "split", "caption_index", "source", "record")


READS_IN_FLIGHT = 16
Read = tuple[bytes | None, str | None]  # an image's bytes (None if unreadable), and why it is not usable


def read_image(path: str, validate: bool) -> Read:
    """The image's bytes, and its problem (missing; with ``validate``, not decodable) or None."""
    try:
        data = storage.read_bytes(path)
    except storage.StorageError:
        return None, f"missing image: {storage.redact(path)}"
    return data, bytes_problem(data, storage.redact(path)) if validate else None


def read_images(paths: list[str], validate: bool) -> dict[str, Read]:
    """``read_image`` of each distinct path, ``READS_IN_FLIGHT`` at a time: on an object store a read is mostly
    waiting on the network (10-50 ms a GET on S3), so one task keeps many in flight rather than one."""
    distinct = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(min(READS_IN_FLIGHT, max(1, len(distinct)))) as pool:
        return dict(zip(distinct, pool.map(lambda p: read_image(p, validate), distinct), strict=True))


def write_batch_images(images_dir: str, rows: list[dict[str, Any]], images: dict[str, bytes]) -> None:
    """The batch's shard of the image table, named by its first record (a retried task rewrites the same file)."""
    if images:
        name = image_table.shard_name(str(rows[0]["source"]), int(rows[0]["record"]))
        image_table.write_shard(storage.join(images_dir, name), images.items())


@dataclass(frozen=True)
class RowPreparer:
    """Callable over a list of record rows; picklable so Ray Data can ship it to workers. Writes the batch's image
    shard into ``images_dir``."""

    spec: PreprocessSpec
    images_dir: str
    seed: int = 0

    @cached_property
    def rules(self) -> FramingRules | None:
        return load_rules(self.spec.refine_rules) if self.spec.refine == "rules" else None

    def _refiner(self, row: dict[str, Any]) -> Any:
        """The training caption's refinement for its platform (None for test rows or refine: none)."""
        if self.rules is None or row["split"] != "train":
            return None
        return partial(self.rules.refine, platform=row["platform"], key=f"{row['image_id']}#{row['caption_index']}")

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        matcher = directional_matcher(self.spec.directional_phrases or DEFAULT_DIRECTIONAL_PHRASES)
        # an image carries several captions: read and decode it once per batch
        read = read_images([row["image_path"] for row in rows], self.spec.validate_images)
        images: dict[str, bytes] = {}  # what the shard stores: the images good rows name
        out: list[dict[str, Any]] = []
        for row in rows:
            path = row["image_path"]
            data, problem = read[path]
            prepared = self._one(row, problem, matcher, data, images)
            if data is not None and not prepared[0]["reject"]:
                images.setdefault(path, data)
            out.extend(prepared)
        write_batch_images(self.images_dir, rows, images)
        return out

    def _one(
        self, row: dict[str, Any], problem: str | None, matcher: Any, data: bytes | None, images: dict[str, bytes]
    ) -> list[dict[str, Any]]:
        base = {k: row[k] for k in _KEPT}
        base.update(caption_raw=row["caption"], augment="", reject="", caption="", statements=[])
        if problem or data is None:
            return [{**base, "reject": problem or "missing image"}]
        words = self.spec.max_words_train if row["split"] == "train" else self.spec.max_words_test
        refine = self._refiner(row)
        prepared = prepare_caption(row["caption"], words, self.spec.statement_words, matcher=matcher, refine=refine)
        if not prepared.caption:
            return [{**base, "reject": "empty caption: nothing left after normalisation"}]
        rows = [{**base, "caption": prepared.caption, "statements": prepared.statements}]
        if row["split"] == "train" and row["platform"] == "satellite" and self.spec.satellite_copies:
            rows.extend(self._augmented(base, words, matcher, refine, data, images))
        return rows

    def _augmented(
        self, base: dict[str, Any], words: int, matcher: Any, refine: Any, data: bytes, images: dict[str, bytes]
    ) -> list[dict[str, Any]]:
        # Sanitise first (then refine): rotations and flips would contradict any directional sentence.
        clean = prepare_caption(
            base["caption_raw"], words, self.spec.statement_words, sanitize=True, matcher=matcher, refine=refine
        )
        if not clean.caption:
            return []  # every sentence was directional: no caption can describe a rotated copy
        copies = []
        for copy in range(self.spec.satellite_copies):
            augment, key = self._augmented_image(base["image_path"], base["image_id"], copy, data, images)
            copies.append(
                {
                    **base,
                    "image_path": key,
                    "image_id": f"{base['image_id']}#aug{copy}",
                    "caption": clean.caption,
                    "caption_raw": clean.source,  # without the directional sentences the copy contradicts
                    "statements": clean.statements,
                    "augment": augment.tag(),
                }
            )
        return copies

    def _augmented_image(
        self, source: str, image_id: str, copy: int, data: bytes, images: dict[str, bytes]
    ) -> tuple[SatelliteAugment, str]:
        """The same (image, copy) always gives the same augmentation and key, whichever caption asks; the copy is
        encoded once per batch."""
        seed = int.from_bytes(hashlib.sha256(f"{image_id}#{copy}".encode()).digest()[:8], "little")
        augment = SatelliteAugment.sample(np.random.default_rng([self.seed, seed]), self.spec.augment_jitter)
        stem = image_id.replace("/", "__").rsplit(".", 1)[0]
        key = f"{AUGMENTED}/{stem}_aug{copy}_{augment.tag()}.jpg"
        if key not in images:
            encoded = io.BytesIO()
            augment.apply(decoded_or_error(data, source)).save(encoded, format="JPEG", quality=95)
            images[key] = encoded.getvalue()
        return augment, key


@dataclass(frozen=True)
class LocalizationChecker:
    """Callable over localization record rows: reads both images (decode-checked with ``validate_images``), adds
    the reference image's size (the centre-box baseline's input) and a ``reject`` reason, and writes the batch's
    image shard into ``images_dir``."""

    validate_images: bool
    images_dir: str

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        images: dict[str, bytes] = {}
        out = []
        paths = [p for row in rows for p in (row["query_path"], row["reference_path"])]
        read = read_images(paths, self.validate_images)
        for row in rows:
            query, problem = read[row["query_path"]]
            reference, reference_problem = read[row["reference_path"]]
            problem = problem or reference_problem
            width = height = 0
            if problem is None and query is not None and reference is not None:
                try:
                    width, height = header_size(reference)
                except DECODE_ERRORS as err:  # only without validate_images: a decoded image has a size
                    problem = f"unreadable image: {storage.redact(row['reference_path'])}: {err}"
            if problem is None and query is not None and reference is not None:
                images.setdefault(row["query_path"], query)
                images.setdefault(row["reference_path"], reference)
            out.append({**row, "reference_width": width, "reference_height": height, "reject": problem or ""})
        write_batch_images(self.images_dir, rows, images)
        return out
