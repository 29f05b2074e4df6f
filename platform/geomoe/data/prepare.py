"""Per-row preprocessing of canonical records (core, no Ray): the work ``pipelines.prepare`` distributes.

For each retrieval row: decode-check the image, normalise the caption (train and test word limits),
split it into short statements; with ``refine: rules``, rewrite training captions for their platform first
(``geomoe.data.refine_rules``); for satellite training rows, sanitise the caption (directional sentences
removed) and only then write ``satellite_copies`` geometrically/photometrically augmented copies of the image.
Every output row carries a ``reject`` reason; empty means the row is good.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import pyarrow as pa

from geomoe import storage
from geomoe.config import PreprocessSpec
from geomoe.data.images import image_problem, open_image
from geomoe.data.refine_rules import FramingRules, load_rules
from geomoe.data.transforms import DEFAULT_DIRECTIONAL_PHRASES, SatelliteAugment, directional_matcher, prepare_caption

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
_KEPT = ("image_path", "image_id", "building_id", "platform", "split", "caption_index", "source", "record")


@dataclass(frozen=True)
class RowPreparer:
    """Callable over a list of record rows; picklable so Ray Data can ship it to workers."""

    spec: PreprocessSpec
    augment_dir: str
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
        checked: dict[str, str | None] = {}  # an image carries several captions: decode it once per batch
        out: list[dict[str, Any]] = []
        for row in rows:
            path = row["image_path"]
            if self.spec.validate_images and path not in checked:
                checked[path] = image_problem(path)
            out.extend(self._one(row, checked.get(path), matcher))
        return out

    def _one(self, row: dict[str, Any], problem: str | None, matcher: Any) -> list[dict[str, Any]]:
        base = {k: row[k] for k in _KEPT}
        base.update(caption_raw=row["caption"], augment="", reject="", caption="", statements=[])
        if problem:
            return [{**base, "reject": problem}]
        words = self.spec.max_words_train if row["split"] == "train" else self.spec.max_words_test
        refine = self._refiner(row)
        prepared = prepare_caption(row["caption"], words, self.spec.statement_words, matcher=matcher, refine=refine)
        if not prepared.caption:
            return [{**base, "reject": "empty caption: nothing left after normalisation"}]
        rows = [{**base, "caption": prepared.caption, "statements": prepared.statements}]
        if row["split"] == "train" and row["platform"] == "satellite" and self.spec.satellite_copies:
            rows.extend(self._augmented(base, words, matcher, refine))
        return rows

    def _augmented(self, base: dict[str, Any], words: int, matcher: Any, refine: Any) -> list[dict[str, Any]]:
        # Sanitise first (then refine): rotations and flips would contradict any directional sentence.
        clean = prepare_caption(
            base["caption_raw"], words, self.spec.statement_words, sanitize=True, matcher=matcher, refine=refine
        )
        if not clean.caption:
            return []  # every sentence was directional: no caption can describe a rotated copy
        copies = []
        for copy in range(self.spec.satellite_copies):
            augment, path = self._augmented_image(base["image_path"], base["image_id"], copy)
            copies.append(
                {
                    **base,
                    "image_path": path,
                    "image_id": f"{base['image_id']}#aug{copy}",
                    "caption": clean.caption,
                    "statements": clean.statements,
                    "augment": augment.tag(),
                }
            )
        return copies

    def _augmented_image(self, source: str, image_id: str, copy: int) -> tuple[SatelliteAugment, str]:
        """The same (image, copy) always gives the same augmentation and file, whichever caption asks."""
        key = int.from_bytes(hashlib.sha256(f"{image_id}#{copy}".encode()).digest()[:8], "little")
        augment = SatelliteAugment.sample(np.random.default_rng([self.seed, key]), self.spec.augment_jitter)
        stem = image_id.replace("/", "__").rsplit(".", 1)[0]
        path = storage.join(self.augment_dir, f"{stem}_aug{copy}_{augment.tag()}.jpg")
        if not storage.is_file(path):
            result = augment.apply(open_image(source))
            with storage.atomic_path(path, ".jpg") as tmp:
                result.save(tmp, format="JPEG", quality=95)
        return augment, path


def check_localization_rows(rows: list[dict[str, Any]], validate_images: bool) -> list[dict[str, Any]]:
    """Decode-check both images of each localization row; attach a ``reject`` reason."""
    out = []
    for row in rows:
        problem = None
        if validate_images:
            problem = image_problem(row["query_path"]) or image_problem(row["reference_path"])
        out.append({**row, "reject": problem or ""})
    return out
