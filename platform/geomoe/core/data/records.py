"""Canonical records every reader produces, with their Arrow schemas, and the reject log.

A retrieval record is one (image, caption) pair; a localization record is one
(drone/street query, satellite tile, click, box) sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from geomoe.core.errors import BadRecordError

OnBadRecord = Literal["fail", "skip"]


@dataclass(frozen=True)
class RetrievalRecord:
    """One (image, caption) pair. ``image_path`` is absolute; ``image_id`` is as the dataset names it."""

    image_path: str
    image_id: str
    building_id: str
    platform: str
    caption: str
    split: str
    caption_index: int = 0
    sentences: list[str] | None = None
    source: str = ""
    record: int = -1

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RETRIEVAL_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("building_id", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("caption_index", pa.int32(), nullable=False),
        pa.field("sentences", pa.list_(pa.string())),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class LocalizationRecord:
    """One click-prompted localization sample. Click in query pixels; box xyxy in reference pixels."""

    sample_id: str
    query_path: str
    reference_path: str
    click_x: float
    click_y: float
    box: list[float]
    class_name: str
    split: str
    setting: str
    polygon: list[float] | None = None
    source: str = ""
    record: int = -1

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LOCALIZATION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("query_path", pa.string(), nullable=False),
        pa.field("reference_path", pa.string(), nullable=False),
        pa.field("click_x", pa.float64(), nullable=False),
        pa.field("click_y", pa.float64(), nullable=False),
        pa.field("box", pa.list_(pa.float64(), 4), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("setting", pa.string(), nullable=False),
        pa.field("polygon", pa.list_(pa.float64())),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
    ]
)


def records_to_table(records: list[Any], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=schema)


@dataclass
class Reject:
    source: str
    record: str
    reason: str
    split: str = ""  # the record's split, where the reader knows it

    def to_row(self) -> dict[str, str]:
        return {"source": self.source, "record": self.record, "reason": self.reason}


@dataclass
class RejectLog:
    """Collects rejected records. With ``policy='fail'`` the first rejection raises instead.

    Nothing is dropped silently: every skip is kept here and ends up in the manifest.
    """

    policy: OnBadRecord = "fail"
    rejects: list[Reject] = field(default_factory=list)

    def reject(self, source: str, record: str | int, reason: str, split: str = "") -> None:
        """``split``: the record's split (a test record is never skipped: ``refuse_skipped_test_records``)."""
        if self.policy == "fail":
            raise BadRecordError(source, record, reason)
        self.rejects.append(Reject(str(source), str(record), reason, split))

    def extend(self, other: RejectLog) -> None:
        for item in other.rejects:
            self.reject(item.source, item.record, item.reason, item.split)

    def refuse_skipped_test_records(self) -> None:
        """``on_bad_record: skip`` skips training records only. A test record left out takes its image out of the
        gallery (or its sample out of the test set) when nothing else names it: the evaluation would rank among
        fewer distractors and read higher. So a test record that cannot be used stops the job, named, whatever
        the policy; fix it or remove it from the test file, knowing the numbers then describe another split."""
        lost = [r for r in self.rejects if r.split == "test"]
        if lost:
            first = lost[0]
            raise BadRecordError(
                first.source,
                first.record,
                f"{first.reason} (a test record, {len(lost)} in all: on_bad_record: skip skips training records "
                "only, since leaving test records out would shrink the gallery and inflate R@K)",
            )

    def reasons(self) -> dict[str, int]:
        """Counts per reason kind (the text before the first ':' of each reason)."""
        counts: dict[str, int] = {}
        for item in self.rejects:
            kind = item.reason.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self.rejects)
