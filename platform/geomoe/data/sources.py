"""Read a configured dataset into canonical records (driver side, cheap): the input of ``prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geomoe.config import DataSpec
from geomoe.data import cvogl
from geomoe.data.geotext import PlatformClassifier, read_geotext
from geomoe.data.records import LocalizationRecord, RejectLog, RetrievalRecord
from geomoe.errors import DatasetError
from geomoe.io import file_sha256, tree_sha256


@dataclass
class SourceRecords:
    kind: str  # "retrieval" | "localization"
    retrieval: list[RetrievalRecord] = field(default_factory=list)
    localization: list[LocalizationRecord] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # source file -> content hash

    def __len__(self) -> int:
        return len(self.retrieval) + len(self.localization)


def read_source(data: DataSpec, rejects: RejectLog) -> SourceRecords:
    root = Path(data.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found (data.root)")
    if data.format == "geotext":
        classify = PlatformClassifier([(r.pattern, r.platform.value) for r in data.platform_rules])
        out = SourceRecords("retrieval")
        for split, name in (("train", data.train_file), ("test", data.test_file)):
            out.retrieval += read_geotext(root, split, name, classify, rejects)
            out.files[str(root / name)] = file_sha256(root / name)
        out.files[str(root / "images")] = "tree:" + tree_sha256(root / "images")
        return out
    if data.format == "cvogl":
        out = SourceRecords("localization")
        for split in cvogl.SPLITS:
            path = cvogl.split_file(root, data.cvogl_setting, split)
            out.localization += cvogl.read_cvogl(root, data.cvogl_setting, split, rejects)
            out.files[str(path)] = file_sha256(path)
        out.files[str(path.parent)] = "tree:" + tree_sha256(path.parent, keep=lambda p: p.suffix != ".pth")
        return out
    raise DatasetError(f"data.format {data.format!r} has no reader")
