"""The prepare pipeline on a real local Ray cluster."""

import json
import shutil
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.image_table import read_shard, shard_locations
from geomoe.core.data.images import decoded
from geomoe.core.data.transforms import normalize_caption
from geomoe.core.errors import BadRecordError
from geomoe.on_ray.pipelines.prepare import prepare


def job(root: Path, out: Path, fmt: str = "geotext", **preprocess: object) -> JobSpec:
    raw = {
        "name": "t",
        "stages": ["prepare"],
        "data": {"format": fmt, "root": str(root)},
        "preprocess": {"output_dir": str(out), **preprocess},
        "resources": {"data_concurrency": 2},
    }
    return parse_spec(JobSpec, raw, "test")


def read_pairs(manifest: dict) -> list[dict]:
    return pads.dataset(manifest["table"], format="parquet", partitioning="hive").to_table().to_pylist()


def test_prepare_geotext(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    manifest = prepare(job(root / "geotext", tmp_path / "out", satellite_copies=2))
    rows = read_pairs(manifest)
    originals = [r for r in rows if not r["augment"]]
    assert len(originals) == counts["geotext"]["train"]["pairs"] + counts["geotext"]["test"]["pairs"]
    assert manifest["total"] == len(rows) and manifest["rejected"]["count"] == 0
    augmented = [r for r in rows if r["augment"]]
    assert len(augmented) == manifest["augmented_rows"] > 0
    assert all(r["platform"] == "satellite" and r["split"] == "train" for r in augmented)
    directional = ("north", "south", "east", "west", "left", "right")
    assert all(not any(w in r["caption"].split() for w in directional) for r in augmented)
    # the text the LLM would refine: raw (cased, punctuated) and, for a copy, without its directional sentences
    assert all(normalize_caption(r["caption_raw"]).split()[:3] == r["caption"].split()[:3] for r in augmented)
    assert all(not any(w in normalize_caption(r["caption_raw"]).split() for w in directional) for r in augmented)
    # every image a row names is in the image table: originals byte for byte, satellite copies only there
    shards = [read_shard(s) for s in shard_locations(manifest["images"]["table"])]
    stored = {k: shard.image(i) for shard in shards for i, k in enumerate(shard.keys)}
    assert set(stored) == {r["image_path"] for r in rows} and manifest["images"]["shards"] == len(shards)
    assert all(stored[r["image_path"]] == Path(r["image_path"]).read_bytes() for r in originals)
    assert all(r["image_path"].startswith("augmented/") and not Path(r["image_path"]).exists() for r in augmented)
    assert all(decoded(stored[r["image_path"]]).size == (32, 32) for r in augmented)  # synth's image_size
    assert all(r["caption"] == r["caption"].lower() and r["statements"] for r in originals)
    for split, per_platform in manifest["rows"].items():
        for platform, n in per_platform.items():
            assert n == sum(r["split"] == split and r["platform"] == platform for r in rows)
    assert set(manifest["source"]["files"]) >= {str(root / "geotext" / "train.json")}


def test_rerun_is_noop_unless_forced(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_synth
    spec = job(root / "geotext", tmp_path / "out", satellite_copies=0)
    first = prepare(spec)
    stamp = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    written = read_pairs(first)
    assert prepare(spec) == first
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == stamp
    forced = prepare(job(root / "geotext", tmp_path / "out", satellite_copies=0, force=True))
    assert forced["total"] == first["total"]
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns != stamp
    assert read_pairs(forced) == written  # whichever task finished first: the same rows in the same order


def broken_copy(root: Path, tmp_path: Path) -> Path:
    data = tmp_path / "geotext"
    shutil.copytree(root / "geotext", data)
    entries = json.loads((data / "train.json").read_text())
    entries.append({"image_id": "0001/weird.png", "image": "train/0001/weird.png", "caption": "x"})
    (data / "train.json").write_text(json.dumps(entries))
    victim = data / "images" / entries[0]["image"]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated JPEG
    return data


def test_bad_records_fail_or_are_counted(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    data = broken_copy(root, tmp_path)
    with pytest.raises(BadRecordError, match=r"train.json: record \d+: unknown platform"):
        prepare(job(data, tmp_path / "fail"))
    assert not (tmp_path / "fail" / "manifest.json").exists()
    manifest = prepare(job(data, tmp_path / "skip", on_bad_record="skip", satellite_copies=0))
    reasons = manifest["rejected"]["by_reason"]
    assert reasons["unknown platform"] == 1
    assert reasons["unreadable image"] == 2  # the truncated image carries two captions
    assert manifest["total"] + 2 == counts["geotext"]["train"]["pairs"] + counts["geotext"]["test"]["pairs"]
    assert all(r["source"].endswith("train.json") for r in manifest["rejected"]["rows"])


def test_a_test_record_that_cannot_be_used_stops_the_job_even_under_skip(
    tiny_synth: tuple[Path, dict], tmp_path: Path
) -> None:
    """Skipping a test record would take its image out of the gallery and inflate R@K: under skip, a bad test
    image (found by the reader, or only when decoded) still stops prepare, naming the test file and record."""
    root, _ = tiny_synth
    for case, name in (("unknown platform", "reader"), ("unreadable image", "decoder")):
        data = tmp_path / name / "geotext"
        shutil.copytree(root / "geotext", data)
        entries = json.loads((data / "test_951_version.json").read_text())
        if name == "reader":
            entries.append({"image_id": "0001/weird.png", "image": "test/0001/weird.png", "caption": "x"})
            (data / "test_951_version.json").write_text(json.dumps(entries))
        else:
            victim = data / "images" / entries[0]["image"]
            victim.write_bytes(victim.read_bytes()[:100])  # truncated JPEG
        skip = job(data, tmp_path / name / "out", on_bad_record="skip", satellite_copies=0)
        with pytest.raises(BadRecordError, match=rf"test_951_version\.json: record \d+: {case}.*a test record"):
            prepare(skip)
        assert not (tmp_path / name / "out" / "manifest.json").exists()


def test_truncated_image_fails_with_file_and_record(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_synth
    data = broken_copy(root, tmp_path)
    entries = json.loads((data / "train.json").read_text())[:-1]  # drop the unknown-platform entry
    (data / "train.json").write_text(json.dumps(entries))
    with pytest.raises(BadRecordError, match=r"train.json: record 0: unreadable image: .*0001/0001.jpg: Truncated"):
        prepare(job(data, tmp_path / "out"))


def test_prepare_cvogl(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    manifest = prepare(job(root / "cvogl", tmp_path / "out", fmt="cvogl"))
    rows = read_pairs(manifest)
    assert {s: sum(v.values()) for s, v in manifest["rows"].items()} == counts["cvogl"]
    assert len(rows) == sum(counts["cvogl"].values())
    assert all(len(r["box"]) == 4 and r["box"][0] < r["box"][2] for r in rows)
    # both images of every sample in the image table, and the reference's size as the file has it
    shards = [read_shard(s) for s in shard_locations(manifest["images"]["table"])]
    stored = {k: shard.image(i) for shard in shards for i, k in enumerate(shard.keys)}
    assert set(stored) == {r["query_path"] for r in rows} | {r["reference_path"] for r in rows}
    for r in rows:
        assert stored[r["reference_path"]] == Path(r["reference_path"]).read_bytes()
        assert (r["reference_width"], r["reference_height"]) == decoded(stored[r["reference_path"]]).size


def test_a_worker_killed_midway_through_prepare_changes_nothing(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    """SIGKILL the process running a prepare task while it decodes (large images keep it busy for seconds): Ray
    runs the task again elsewhere and the prepared table is exactly the undisturbed run's."""
    import threading

    import numpy as np
    import psutil
    from PIL import Image

    from ports import own_descendants

    root, _ = tiny_synth
    data = tmp_path / "geotext"
    shutil.copytree(root / "geotext", data)
    gradient = np.add.outer(np.arange(3000) % 256, np.arange(3000) % 256).astype(np.uint8)
    for path in sorted((data / "images").rglob("*.jp*g"))[:16]:  # slow to decode, same file names
        Image.fromarray(np.stack([gradient] * 3, -1)).save(path, "JPEG", quality=90)
    undisturbed = read_pairs(prepare(job(data, tmp_path / "calm", satellite_copies=0)))
    killed: list[int] = []
    done = threading.Event()

    def running_a_prepare_task(process: psutil.Process) -> bool:
        return "MapBatches" in " ".join(process.cmdline())  # Ray titles a worker by the task it runs

    def kill_a_prepare_task() -> None:
        while not done.is_set() and not killed:
            # only this session's own cluster: its workers descend from this process (address="local")
            for process in own_descendants(running_a_prepare_task)[:1]:
                process.kill()
                killed.append(process.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_prepare_task)
    killer.start()
    try:
        disturbed = read_pairs(prepare(job(data, tmp_path / "killed", satellite_copies=0)))
    finally:
        done.set()
        killer.join()
    assert killed, "no prepare task was seen running"
    assert disturbed == undisturbed


def test_the_bad_input_corpus_through_the_prepare_stage(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    """The corpus's images (each under a drone file name) and its per-entry annotation faults, appended to a
    GeoText copy: under ``skip`` each bad one is counted with its reason and nothing else is lost (prepared +
    rejected = every caption given); decodable variants are prepared; under ``fail`` the first stops the run,
    naming train.json and the record."""
    import re

    from bad_inputs import CASES, GEOTEXT, slug

    root, _ = tiny_synth
    data = tmp_path / "geotext"
    shutil.copytree(root / "geotext", data)
    entries = json.loads((data / "train.json").read_text())
    given, expected = len(entries), {}
    for n, case in enumerate(c for c in CASES if c.reader == "image"):
        image = f"train/{9000 + n}/image-01.jpeg"
        (data / "images" / image).parent.mkdir(parents=True)
        shutil.copy(case.write(tmp_path / "corpus" / slug(case)), data / "images" / image)
        entries.append({"image_id": image.removeprefix("train/"), "image": image, "caption": f"a building {n}"})
        expected[image.removeprefix("train/")] = case
    for case in (c for c in GEOTEXT if c.outcome == "rejected"):  # the per-entry cases, in train.json
        written = case.write(tmp_path / "corpus" / slug(case))
        shutil.copytree(written.parent / "images", data / "images", dirs_exist_ok=True)  # the entries' image
        entries += [e for e in json.loads(written.read_text()) if e.get("caption") != "A red roof beside a road."]
    (data / "train.json").write_text(json.dumps(entries))
    with pytest.raises(BadRecordError, match=r"train\.json: record \d+: "):
        prepare(job(data, tmp_path / "fail", satellite_copies=0))
    manifest = prepare(job(data, tmp_path / "skip", on_bad_record="skip", satellite_copies=0))
    rejected = manifest["rejected"]["rows"]
    prepared = {r["image_id"] for r in read_pairs(manifest)}
    for image_id, case in expected.items():
        mine = [r for r in rejected if image_id in r["reason"]]
        if case.outcome == "rejected":
            assert len(mine) == 1 and re.search(case.expect.split(": .*")[0], mine[0]["reason"]), (case.name, mine)
        else:
            assert not mine and image_id in prepared, case.name
    train_json_rejects = [r for r in rejected if r["source"].endswith("train.json")]
    assert len(train_json_rejects) == sum(c.outcome == "rejected" for c in CASES if c.reader == "image") + 4, [
        r["reason"][:80] for r in train_json_rejects
    ]
    originals = [r for r in read_pairs(manifest) if r["augment"] == "" and r["split"] == "train"]
    captions_given = sum(len(e["caption"]) if isinstance(e["caption"], list) else 1 for e in entries[given:])
    captions_given += sum(1 for r in json.loads((root / "geotext" / "train.json").read_text()))
    assert len(originals) + len(train_json_rejects) == captions_given  # no silent drop
