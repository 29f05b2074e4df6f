"""RoboSense 2025 Track 4 layout (docs/datasets.md).

Queries: ``q_00001<TAB>text`` per line. Gallery: a flat folder of ``image_<8 hex>.jpeg`` with no labels.
Submission: ``submission.txt``, one line per query ``q1 id1 ... id10`` (ids are file stems, best first),
zipped as ``submission.zip``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from geomoe.core import storage
from geomoe.core.data.records import RejectLog
from geomoe.core.errors import DatasetError
from geomoe.core.storage import atomic_path

QUERY_ID = re.compile(r"q_(\d+)")
GALLERY_NAME = re.compile(r"(image_[0-9a-f]{8})\.jpeg")
SUBMISSION_DEPTH = 10


def read_queries(path: str | Path, rejects: RejectLog) -> list[tuple[str, str]]:
    """Return (query id, text) in file order; malformed lines and duplicate ids go to ``rejects``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: query file not found")
    queries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line_no, line in enumerate(storage.read_text(path).splitlines(), start=1):  # CRLF, a BOM: both fine
        if not line.strip():
            continue
        query_id, tab, text = line.partition("\t")
        if not tab:
            rejects.reject(str(path), f"line {line_no}", "malformed line: expected 'q_NNNNN<TAB>query'")
        elif not QUERY_ID.fullmatch(query_id):
            rejects.reject(str(path), f"line {line_no}", f"bad query id {query_id!r}: expected q_ and digits")
        elif not text.strip():
            rejects.reject(str(path), f"line {line_no}", "empty caption")
        elif query_id in seen:
            rejects.reject(str(path), f"line {line_no}", f"duplicate query id {query_id}")
        else:
            seen.add(query_id)
            queries.append((query_id, text.strip()))
    return queries


def list_gallery(folder: str | Path, rejects: RejectLog) -> list[tuple[str, str]]:
    """Return sorted (image id, absolute path) of a Track 4 gallery; other files go to ``rejects``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: gallery folder not found")
    gallery = []
    for path in sorted(folder.iterdir()):
        match = GALLERY_NAME.fullmatch(path.name)
        if match is None:
            rejects.reject(str(folder), path.name, "unexpected file name: expected image_<8 hex>.jpeg")
        else:
            gallery.append((match.group(1), str(path.resolve())))
    return gallery


def submission_query_id(query_id: str) -> str:
    """``q_00001`` -> ``q1`` (the challenge's submission spelling)."""
    match = QUERY_ID.fullmatch(query_id)
    if match is None:
        raise ValueError(f"bad query id {query_id!r}: expected q_ and digits")
    return f"q{int(match.group(1))}"


def format_submission(rankings: Mapping[str, Sequence[str]]) -> str:
    """One line per query, in the given order: ``q1 id1 ... id10``. Exactly 10 distinct ids each."""
    lines = []
    for query_id, ids in rankings.items():
        if len(ids) != SUBMISSION_DEPTH or len(set(ids)) != SUBMISSION_DEPTH:
            raise ValueError(f"{query_id}: a submission line needs exactly 10 distinct image ids, got {list(ids)}")
        bad = [i for i in ids if not re.fullmatch(r"image_[0-9a-f]{8}", i)]
        if bad:
            raise ValueError(f"{query_id}: ids must be gallery file stems like image_0a1b2c3d, got {bad}")
        lines.append(" ".join([submission_query_id(query_id), *ids]))
    return "\n".join(lines) + "\n"


def write_submission(out_dir: str | Path, rankings: Mapping[str, Sequence[str]]) -> tuple[Path, Path]:
    """Write submission.txt and submission.zip (containing it) atomically; return both paths."""
    out_dir = Path(out_dir)
    text = format_submission(rankings)
    txt, archive = out_dir / "submission.txt", out_dir / "submission.zip"
    with atomic_path(txt) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("submission.txt", text)
    return txt, archive


def write_queries(path: str | Path, queries: Sequence[tuple[str, str]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{qid}\t{text}\n" for qid, text in queries), encoding="utf-8")
