"""Readers on hand-written fixtures in the real on-disk formats (not synthgeo output)."""

import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from geomoe.core.config import DEFAULT_PLATFORM_RULES
from geomoe.core.data.cvogl import read_cvogl, split_file
from geomoe.core.data.geotext import PlatformClassifier, read_geotext
from geomoe.core.data.images import image_problem
from geomoe.core.data.records import RejectLog
from geomoe.core.data.track4 import format_submission, list_gallery, read_queries, write_submission
from geomoe.core.errors import BadRecordError, DatasetError

CLASSIFY = PlatformClassifier([(r.pattern, r.platform.value) for r in DEFAULT_PLATFORM_RULES])


def jpeg(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 30)).save(path)
    return path


@pytest.fixture
def geotext(tmp_path: Path) -> Path:
    for rel in [
        "train/0839/image-43.jpeg",
        "train/0839/0839.jpg",
        "train/0840/street-01.jpg",
        "test/0900/image-01.jpeg",
    ]:
        jpeg(tmp_path / "images" / rel)
    train = [
        {
            "image_id": "0839/image-43.jpeg",
            "image": "train/0839/image-43.jpeg",
            "caption": "A red roof. Trees.",
            "sentences": ["A red roof.", "Trees."],
            "bboxes": [[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]],
        },
        {
            "image_id": "0839/0839.jpg",
            "image": "train/0839/0839.jpg",
            "caption": "Top view.",
            "sentences": None,
            "bboxes": None,
        },
        {"image_id": "0840/street-01.jpg", "image": "train/0840/street-01.jpg", "caption": "A facade."},
    ]
    test = [
        {"image_id": "0900/image-01.jpeg", "image": "test/0900/image-01.jpeg", "caption": ["q one", "q two", "q three"]}
    ]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test_951_version.json").write_text(json.dumps(test))
    return tmp_path


def test_geotext_train_and_test(geotext: Path) -> None:
    rejects = RejectLog("fail")
    train = read_geotext(geotext, "train", "train.json", CLASSIFY, rejects)
    test = read_geotext(geotext, "test", "test_951_version.json", CLASSIFY, rejects)
    assert [(r.building_id, r.platform) for r in train] == [
        ("0839", "drone"),
        ("0839", "satellite"),
        ("0840", "ground"),
    ]
    assert train[0].sentences == ["A red roof.", "Trees."] and train[1].sentences is None
    assert [(r.caption, r.caption_index) for r in test] == [("q one", 0), ("q two", 1), ("q three", 2)]
    assert Path(test[0].image_path).is_file() and len(rejects) == 0


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"image_id": "0839/0839.jpg", "image": "train/0839/nope.jpg", "caption": "x"}, "missing image"),
        ({"image_id": "0839/odd.png", "image": "train/0839/0839.jpg", "caption": "x"}, "unknown platform"),
        ({"image_id": "0839/0839.jpg", "image": "train/0839/0839.jpg", "caption": 5}, "wrong type: field 'caption'"),
        ({"image_id": "0839/0839.jpg", "image": "train/0839/0839.jpg", "caption": "  "}, "empty caption"),
        (
            {"image_id": "0839/0839.jpg", "image": "train/0839/0839.jpg", "caption": "x", "sentences": "s"},
            "wrong type: field 'sentences'",
        ),
        (["not", "an", "object"], "wrong type: entry is list"),
    ],
)
def test_geotext_bad_records(geotext: Path, entry: object, reason: str) -> None:
    entries = [*json.loads((geotext / "train.json").read_text()), entry]
    (geotext / "train.json").write_text(json.dumps(entries))
    with pytest.raises(BadRecordError) as err:
        read_geotext(geotext, "train", "train.json", CLASSIFY, RejectLog("fail"))
    assert "train.json" in str(err.value) and "record 3" in str(err.value) and reason in str(err.value)
    skip = RejectLog("skip")
    assert len(read_geotext(geotext, "train", "train.json", CLASSIFY, skip)) == 3
    assert len(skip) == 1 and reason in skip.rejects[0].reason and skip.rejects[0].record.startswith("3")
    skip.refuse_skipped_test_records()  # a training record: skipped and counted
    # the same entry in the test file: skipping it would shrink the gallery, so it stops the job under skip too
    (geotext / "test.json").write_text(json.dumps([entry]))
    test_skip = RejectLog("skip")
    read_geotext(geotext, "test", "test.json", CLASSIFY, test_skip)
    with pytest.raises(BadRecordError, match=rf"test\.json: record 0.*{reason}.*a test record, 1 in all"):
        test_skip.refuse_skipped_test_records()


def test_geotext_malformed_json_names_file_and_line(geotext: Path) -> None:
    (geotext / "train.json").write_text('[{"image_id": "0839/0839.jpg",\n "caption": }]')
    with pytest.raises(DatasetError, match=r"train.json: malformed JSON at line 2"):
        read_geotext(geotext, "train", "train.json", CLASSIFY, RejectLog("skip"))


def test_image_problem_detects_truncated_and_garbage(tmp_path: Path) -> None:
    good = jpeg(tmp_path / "a.jpg", (64, 64))
    assert image_problem(good) is None
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    assert "unreadable image" in (image_problem(truncated) or "")
    (tmp_path / "g.jpg").write_bytes(b"not an image")
    assert "unreadable image" in (image_problem(tmp_path / "g.jpg") or "")
    assert "missing image" in (image_problem(tmp_path / "none.jpg") or "")


def test_track4_queries_gallery_and_submission(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("q_00001\tthe red roof\nq_00002\t  \nbad line\nq_00001\tdup\nq_00010\tlast one\n")
    rejects = RejectLog("skip")
    assert read_queries(tmp_path / "q.txt", rejects) == [("q_00001", "the red roof"), ("q_00010", "last one")]
    assert [r.reason.split(":")[0] for r in rejects.rejects] == [
        "empty caption",
        "malformed line",
        "duplicate query id q_00001",
    ]
    with pytest.raises(BadRecordError, match="line 2"):
        read_queries(tmp_path / "q.txt", RejectLog("fail"))
    gallery = tmp_path / "gallery"
    ids = [f"image_{i:08x}" for i in range(12)]
    for i in ids:
        jpeg(gallery / f"{i}.jpeg")
    jpeg(gallery / "stray.jpg")
    found = list_gallery(gallery, rejects)
    assert [g for g, _ in found] == ids and rejects.rejects[-1].record == "stray.jpg"
    txt, archive = write_submission(tmp_path / "sub", {"q_00001": ids[:10], "q_00010": ids[2:12]})
    assert txt.read_text().splitlines()[1] == "q10 " + " ".join(ids[2:12])
    assert len(txt.read_text().splitlines()[0].split(" ")) == 11
    with zipfile.ZipFile(archive) as bundle:
        assert bundle.namelist() == ["submission.txt"] and bundle.read("submission.txt").decode() == txt.read_text()
    with pytest.raises(ValueError, match="exactly 10 distinct"):
        format_submission({"q_00001": ids[:9]})


CVOGL_EXAMPLE = (
    131425,
    "131425_539733_4880095.jpg",
    "539827_4880079_300_32615.jpg",
    (383, 380),
    (191, 190),
    [258.56, 325.97, 592.76, 657.03],
    [495.99, 325.97, 592.76, 558.05, 355.29, 657.03, 258.56, 424.96],
    "building_retail",
)


@pytest.mark.parametrize("setting", ["DroneAerial", "SVI"])
def test_cvogl_reads_real_tuple(tmp_path: Path, setting: str) -> None:
    base = tmp_path / f"CVOGL_{setting}"
    jpeg(base / "query" / CVOGL_EXAMPLE[1], (256, 256) if setting == "DroneAerial" else (512, 256))
    jpeg(base / "satellite" / CVOGL_EXAMPLE[2], (1024, 1024))
    torch.save([CVOGL_EXAMPLE], split_file(tmp_path, setting, "train"))
    (record,) = read_cvogl(tmp_path, setting, "train", RejectLog("fail"))
    assert (record.sample_id, record.click_x, record.click_y) == ("131425", 191.0, 190.0)
    assert record.box == [258.56, 325.97, 592.76, 657.03] and record.class_name == "building_retail"
    assert record.polygon is not None and len(record.polygon) == 8 and record.setting == setting


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({5: [1100.0, 1100.0, 1200.0, 1200.0]}, "box outside tile"),
        ({5: [10.0, 10.0, 5.0, 20.0]}, "degenerate box"),
        ({4: (300, 10)}, "click outside query"),
        ({2: "absent.jpg"}, "missing image"),
        ({5: "box"}, "wrong type: box"),
    ],
)
def test_cvogl_bad_records(tmp_path: Path, change: dict, reason: str) -> None:
    base = tmp_path / "CVOGL_DroneAerial"
    jpeg(base / "query" / CVOGL_EXAMPLE[1], (256, 256))
    jpeg(base / "satellite" / CVOGL_EXAMPLE[2], (1024, 1024))
    bad = tuple(change.get(i, v) for i, v in enumerate(CVOGL_EXAMPLE))
    torch.save([CVOGL_EXAMPLE, bad, (1, 2)], split_file(tmp_path, "DroneAerial", "val"))
    with pytest.raises(BadRecordError, match=rf"CVOGL_DroneAerial_val.pth: record 1: {reason}"):
        read_cvogl(tmp_path, "DroneAerial", "val", RejectLog("fail"))
    skip = RejectLog("skip")
    assert len(read_cvogl(tmp_path, "DroneAerial", "val", skip)) == 1
    assert [r.record for r in skip.rejects] == ["1", "2"] and "8-tuple" in skip.rejects[1].reason


def test_cvogl_unreadable_file(tmp_path: Path) -> None:
    path = Path(split_file(tmp_path, "SVI", "test"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable torch-saved list"):
        read_cvogl(tmp_path, "SVI", "test", RejectLog("skip"))
