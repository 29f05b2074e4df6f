"""Read a configured dataset into canonical records (driver side, cheap): the input of ``prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field

from geomoe.core import storage
from geomoe.core.config import DataSpec
from geomoe.core.data import cvogl
from geomoe.core.data.geotext import PlatformClassifier, read_geotext
from geomoe.core.data.records import LocalizationRecord, RejectLog, RetrievalRecord
from geomoe.core.errors import DatasetError


@dataclass
class SourceRecords:
    kind: str  # "retrieval" | "localization"
    retrieval: list[RetrievalRecord] = field(default_factory=list)
    localization: list[LocalizationRecord] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # source file -> content hash

    def __len__(self) -> int:
        return len(self.retrieval) + len(self.localization)


def _key(root: str, name: str) -> str:
    return storage.redact(storage.join(root, name))


def read_source(data: DataSpec, rejects: RejectLog) -> SourceRecords:
    root = storage.absolute(data.root)
    if not storage.is_dir(root):
        raise DatasetError(f"{storage.redact(root)}: dataset root not found (data.root)")
    if data.format == "geotext":
        classify = PlatformClassifier([(r.pattern, r.platform.value) for r in data.platform_rules])
        out = SourceRecords("retrieval")
        images = storage.join(root, "images")
        listing = storage.list_files(images)  # once: both splits' existence checks and the tree hash use it
        for split, name in (("train", data.train_file), ("test", data.test_file)):
            out.retrieval += read_geotext(root, split, name, classify, rejects, listing)
            out.files[_key(root, name)] = storage.file_sha256(storage.join(root, name))
        out.files[_key(root, "images")] = "tree:" + storage.tree_sha256(images, listing=listing)
        return out
    if data.format == "cvogl":
        out = SourceRecords("localization")
        folder = storage.parent(cvogl.split_file(root, data.cvogl_setting, "train"))
        listing = storage.list_files(folder)  # once: every split's existence checks and the tree hash use it
        for split in cvogl.SPLITS:
            path = cvogl.split_file(root, data.cvogl_setting, split)
            out.localization += cvogl.read_cvogl(root, data.cvogl_setting, split, rejects, listing)
            out.files[storage.redact(path)] = storage.file_sha256(path)
        not_split_file = lambda p: not p.endswith(".pth")  # noqa: E731
        out.files[storage.redact(folder)] = "tree:" + storage.tree_sha256(folder, not_split_file, listing)
        return out
    raise DatasetError(f"data.format {data.format!r} has no reader")
