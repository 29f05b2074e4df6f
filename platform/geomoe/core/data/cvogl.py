"""CVOGL on disk (docs/datasets.md): CVOGL_<setting>/CVOGL_<setting>_<split>.pth plus query/, satellite/.

Each .pth is a torch-saved list of 8-tuples:
(sample id, query file, satellite file, click at another scale, click (x, y) in query pixels,
 box [x1, y1, x2, y2] in satellite pixels, 8-value rotated polygon, class name).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from geomoe.core import storage
from geomoe.core.data.images import image_size
from geomoe.core.data.records import LocalizationRecord, RejectLog
from geomoe.core.errors import DatasetError, ImageError

SETTINGS = ("DroneAerial", "SVI")
SPLITS = ("train", "val", "test")


def split_file(root: str | Path, setting: str, split: str) -> str:
    return storage.join(root, f"CVOGL_{setting}", f"CVOGL_{setting}_{split}.pth")


def _numbers(value: Any, count: int) -> list[float] | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != count:
        return None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _finite(value: Any) -> bool:
    """True unless ``value`` is a sequence of numbers with a NaN or an infinity (other shapes are caught apart)."""
    numbers = _numbers(value, len(value)) if isinstance(value, Sequence) and not isinstance(value, str) else None
    return numbers is None or all(math.isfinite(v) for v in numbers)


def _tuple_problem(entry: Any) -> str | None:
    if not isinstance(entry, (tuple, list)) or len(entry) != 8:
        return "wrong type: expected an 8-tuple (id, query, satellite, click2, click, box, polygon, class)"
    checks = [
        (isinstance(entry[0], (int, str)) and not isinstance(entry[0], bool), "sample id must be int or str"),
        (isinstance(entry[1], str) and bool(entry[1]), "query file must be a non-empty string"),
        (isinstance(entry[2], str) and bool(entry[2]), "satellite file must be a non-empty string"),
        (_numbers(entry[4], 2) is not None, "click must be two numbers (x, y)"),
        (_finite(entry[4]), "click must be finite (no NaN or infinity)"),
        (_numbers(entry[5], 4) is not None, "box must be four numbers [x1, y1, x2, y2]"),
        (_finite(entry[5]), "box must be finite (no NaN or infinity)"),
        (entry[6] is None or _numbers(entry[6], 8) is not None, "polygon must be null or eight numbers"),
        (isinstance(entry[7], str), "class name must be a string"),
    ]
    for ok, reason in checks:
        if not ok:
            return f"wrong type: {reason}"
    return None


def _geometry_problem(click: list[float], box: list[float], query: str, tile: str) -> str | None:
    try:
        qw, qh = image_size(query)
        tw, th = image_size(tile)
    except ImageError as err:
        return f"unreadable image: {err.path}: {err.reason}"
    if not (0 <= click[0] <= qw and 0 <= click[1] <= qh):
        return f"click outside query: ({click[0]:.1f}, {click[1]:.1f}) not in {qw}x{qh}"
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return f"degenerate box {box}"
    # A box partly beyond the edge is kept (the DetGeo metric clamps it); one with no overlap is not.
    if x2 <= 0 or y2 <= 0 or x1 >= tw or y1 >= th:
        return f"box outside tile: {box} does not overlap the {tw}x{th} tile"
    return None


def load_split(path: str) -> list[Any]:
    import torch  # heavy; only readers of CVOGL pay for it

    shown = storage.redact(path)
    if not storage.is_file(path):
        raise DatasetError(f"{shown}: file not found")
    try:
        with storage.open_input(path) as handle:  # a file object: the split may live in object storage
            data = torch.load(handle, weights_only=True)
    except Exception as err:
        raise DatasetError(f"{shown}: not a readable torch-saved list: {err}") from err
    if not isinstance(data, list):
        raise DatasetError(f"{shown}: expected a list of 8-tuples, got {type(data).__name__}")
    return data


def read_cvogl(
    root: str | Path, setting: str, split: str, rejects: RejectLog, listing: list[tuple[str, int]] | None = None
) -> list[LocalizationRecord]:
    """Read one CVOGL split into records; bad tuples, missing images and bad geometry go to ``rejects``.
    ``listing``: the setting folder's ``storage.list_files``, when the caller has it already (one listing, not
    one request per image)."""
    if setting not in SETTINGS:
        raise DatasetError(f"unknown CVOGL setting {setting!r}; expected one of {SETTINGS}")
    path = split_file(storage.absolute(root), setting, split)
    base = storage.parent(path)
    files = [rel for rel, _ in (storage.list_files(base) if listing is None else listing)]
    present = {
        folder: {r.split("/", 1)[1] for r in files if r.startswith(f"{folder}/")} for folder in ("query", "satellite")
    }
    records = []
    for index, entry in enumerate(load_split(path)):
        problem = _tuple_problem(entry)
        if problem is None:
            query, tile = storage.join(base, "query", entry[1]), storage.join(base, "satellite", entry[2])
            missing = [
                p
                for p, folder, name in ((query, "query", entry[1]), (tile, "satellite", entry[2]))
                if name not in present[folder]
            ]
            if missing:
                problem = f"missing image: {storage.redact(missing[0])}"
            else:
                problem = _geometry_problem(_numbers(entry[4], 2) or [], _numbers(entry[5], 4) or [], query, tile)
        if problem is not None:
            rejects.reject(storage.redact(path), index, problem, split)
            continue
        click = _numbers(entry[4], 2) or []
        records.append(
            LocalizationRecord(
                sample_id=str(entry[0]),
                query_path=query,
                reference_path=tile,
                click_x=click[0],
                click_y=click[1],
                box=_numbers(entry[5], 4) or [],
                class_name=entry[7],
                split=split,
                setting=setting,
                polygon=_numbers(entry[6], 8),
                source=storage.redact(path),
                record=index,
            )
        )
    return records


def write_cvogl_split(root: str | Path, setting: str, split: str, entries: list[tuple[Any, ...]]) -> str:
    """Save a split file in the CVOGL format (a torch-saved list of 8-tuples), atomically."""
    import torch

    path = split_file(root, setting, split)
    with storage.atomic_path(path) as tmp:
        torch.save(list(entries), tmp)
    return path
