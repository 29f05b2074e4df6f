"""Every case of the bad-input corpus (tests/bad_inputs.py) through its reader: a handled variant is read correctly,
a rejected record is counted with its reason under ``skip`` and stops the run naming file and record under
``fail``, a broken file is a GeomoeError naming it. Anything else (a traceback, a silent drop, code that ran) fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bad_inputs import CASES, RED, Case, markdown_table, marker_of, slug
from geomoe.core.config import DEFAULT_PLATFORM_RULES, load_job
from geomoe.core.data.cvogl import read_cvogl
from geomoe.core.data.geotext import PlatformClassifier, read_geotext
from geomoe.core.data.images import image_array, image_problem, image_size, open_image
from geomoe.core.data.records import RejectLog
from geomoe.core.data.track4 import read_queries
from geomoe.core.errors import BadRecordError, GeomoeError, ImageError
from geomoe.core.models.checkpoint import read_checkpoint
from geomoe.families.smgeo.localization import decode_pair

REPO = Path(__file__).resolve().parents[2]
CLASSIFY = PlatformClassifier([(r.pattern, r.platform.value) for r in DEFAULT_PLATFORM_RULES])


def read(case: Case, path: Path, policy: str) -> tuple[list[Any], RejectLog]:
    """Run the case's reader; returns what it read and its rejections."""
    rejects = RejectLog(policy)  # type: ignore[arg-type]
    if case.reader == "geotext":
        return read_geotext(path.parent, "train", path.name, CLASSIFY, rejects), rejects
    if case.reader == "cvogl":
        return read_cvogl(path, "DroneAerial", "test", rejects), rejects
    if case.reader == "track4":
        return read_queries(path, rejects), rejects
    if case.reader == "yaml":
        return [load_job(path)], rejects
    if case.reader == "checkpoint":
        return [read_checkpoint(path)], rejects
    raise AssertionError(case.reader)


@pytest.mark.parametrize("case", [c for c in CASES if c.reader != "image"], ids=slug)
def test_every_bad_file_or_record_gets_its_written_behaviour(case: Case, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    if case.outcome == "error":
        with pytest.raises(GeomoeError) as raised:
            read(case, path, "fail")
        assert re.search(case.expect, str(raised.value)), str(raised.value)
        assert not marker_of(tmp_path).exists()  # no pickled code ran
        return
    if case.outcome == "rejected":
        with pytest.raises(BadRecordError) as raised:
            read(case, path, "fail")
        assert re.search(case.expect, raised.value.reason) and path.name in raised.value.source  # file and reason
        assert raised.value.record != ""  # and the record
        read_back, rejects = read(case, path, "skip")
        assert len(rejects) == 1 and re.search(case.expect, rejects.rejects[0].reason), rejects.rejects
        assert len(read_back) >= 1  # the good record beside it is kept
        return
    read_back, rejects = read(case, path, "fail")
    assert len(rejects) == 0
    HANDLED[slug(case)](read_back)


def _long_caption(records: list[Any]) -> None:
    from geomoe.core.data.transforms import prepare_caption

    (record,) = records
    assert len(record.caption.split()) == 10_000
    assert len(prepare_caption(record.caption, 30, 0).caption.split()) <= 30


def _queries(queries: list[tuple[str, str]]) -> None:
    assert queries == [("q_00001", "a red roof"), ("q_00002", "a road")]


HANDLED = {"10-000-word-caption": _long_caption, "track-4-queries-with-crlf": _queries,
           "track-4-queries-with-a-bom": _queries}  # fmt: skip


@pytest.mark.parametrize("case", [c for c in CASES if c.reader == "image"], ids=slug)
def test_every_image_case_is_decoded_correctly_or_refused_by_name(case: Case, tmp_path: Path) -> None:
    """The same answer from every place that reads an image: prepare's check, EVA-CLIP's and SMGeo's decoders,
    the header-only size CVOGL's geometry check uses."""
    path = case.write(tmp_path)
    if case.outcome == "rejected":
        problem = image_problem(path)
        assert problem is not None and re.search(case.expect, problem), problem
        for decode in (lambda: image_array(path, 16), lambda: open_image(path), lambda: image_size(path)):
            with pytest.raises(ImageError, match=re.escape(path.name)):
                decode()
        return
    assert image_problem(path) is None
    pixels = np.asarray(open_image(path).convert("RGB"), np.float32)
    assert image_array(path, 16).shape == (3, 16, 16)
    row = {"query_path": str(path), "reference_path": str(path), "click_x": 1.0, "click_y": 1.0, "box": [0, 0, 2, 2]}
    assert decode_pair(row, 16, 16)["query"].shape == (3, 16, 16)
    if slug(case) == "exif-orientation-6":  # 40x30 left red: displayed 30x40, the red half on top
        assert image_size(path) == (30, 40) and pixels.shape == (40, 30, 3)
        assert _close(pixels[:20].mean((0, 1)), RED) and not _close(pixels[20:].mean((0, 1)), RED)
    elif slug(case) == "16-bit-greyscale-png":  # 40,000 of 65,535 is 156 of 255, not white
        assert abs(pixels.mean() - 40_000 / 257) < 1
    elif slug(case) == "greyscale-jpeg":
        assert np.allclose(pixels[..., 0], pixels[..., 1]) and np.allclose(pixels[..., 1], pixels[..., 2])
    else:  # CMYK, PNG named .jpeg: the colours of the picture (left half red)
        assert image_size(path) == (40, 30) and _close(pixels[:, :20].mean((0, 1)), RED)


def _close(rgb: np.ndarray, expected: tuple[int, int, int], tolerance: float = 25) -> bool:
    return bool(np.abs(rgb - np.asarray(expected)).max() < tolerance)


def test_the_reliability_page_lists_every_case() -> None:
    table = markdown_table()
    page = (REPO / "docs" / "reliability.md").read_text()
    assert table in page, "docs/reliability.md's table: paste markdown_table()"
    assert len(CASES) == table.count("\n") - 1
