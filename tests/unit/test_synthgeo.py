"""synthgeo writes the three real layouts; the real readers read back exactly the counts it reports."""

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from geomoe.config import DEFAULT_PLATFORM_RULES, SynthSpec
from geomoe.data.cvogl import read_cvogl
from geomoe.data.geotext import PlatformClassifier, read_geotext
from geomoe.data.records import RejectLog
from geomoe.data.synthgeo import generate
from geomoe.data.synthgeo.render import ObliqueCamera
from geomoe.data.track4 import list_gallery, read_queries

CLASSIFY = PlatformClassifier([(r.pattern, r.platform.value) for r in DEFAULT_PLATFORM_RULES])


def test_readers_reproduce_generator_counts(tiny_synth: tuple[Path, dict]) -> None:
    root, counts = tiny_synth
    rejects = RejectLog("fail")
    for split, name in (("train", "train.json"), ("test", "test_951_version.json")):
        records = read_geotext(root / "geotext", split, name, CLASSIFY, rejects)
        assert len(records) == counts["geotext"][split]["pairs"]
        images = {r.image_id: r.platform for r in records}
        for platform, n in counts["geotext"][split]["images"].items():
            assert sum(p == platform for p in images.values()) == n
        assert len({r.building_id for r in records}) == counts["geotext"][split]["buildings"]
    assert len(read_queries(root / "track4" / "queries.txt", rejects)) == counts["track4"]["queries"]
    assert len(list_gallery(root / "track4" / "gallery", rejects)) == counts["track4"]["gallery"]
    for split in ("train", "val", "test"):
        assert len(read_cvogl(root / "cvogl", "DroneAerial", split, rejects)) == counts["cvogl"][split]


def test_train_and_test_buildings_are_disjoint(tiny_synth: tuple[Path, dict]) -> None:
    root, _ = tiny_synth
    train = read_geotext(root / "geotext", "train", "train.json", CLASSIFY, RejectLog())
    test = read_geotext(root / "geotext", "test", "test_951_version.json", CLASSIFY, RejectLog())
    assert not {r.building_id for r in train} & {r.building_id for r in test}
    # training captions are verbose, test queries concise
    assert all(len(r.caption.split()) > len(t.caption.split()) for r, t in zip(train, test, strict=False))


def test_generation_is_deterministic_and_reused(tmp_path: Path) -> None:
    spec = SynthSpec(
        train_buildings=2,
        test_buildings=1,
        drone_views=1,
        ground_views=1,
        image_size=24,
        localization_train=1,
        localization_val=0,
        localization_test=1,
        tile_size=48,
        query_size=24,
    )
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for rel in ["geotext/train.json", "geotext/images/train/0001/image-01.jpeg", "track4/queries.txt"]:
        assert digest(tmp_path / "a" / rel) == digest(tmp_path / "b" / rel)
    stamp = (tmp_path / "a" / "synthgeo.json").stat().st_mtime_ns
    generate(tmp_path / "a", spec)  # same spec: reused, not rewritten
    assert (tmp_path / "a" / "synthgeo.json").stat().st_mtime_ns == stamp
    other = generate(tmp_path / "a", spec.model_copy(update={"seed": 5}))
    assert other["geotext"]["train"]["buildings"] == 2
    assert digest(tmp_path / "a" / "geotext/train.json") != digest(tmp_path / "b" / "geotext/train.json")


def test_localization_box_marks_the_target_pixels(tiny_synth: tuple[Path, dict]) -> None:
    """The box lies in the tile and differs from plain grass: it marks a drawn object."""
    root, _ = tiny_synth
    for record in read_cvogl(root / "cvogl", "DroneAerial", "train", RejectLog()):
        tile = np.asarray(Image.open(record.reference_path), dtype=np.float32)
        x1, y1, x2, y2 = (round(v) for v in record.box)
        assert 0 <= x1 < x2 <= tile.shape[1] and 0 <= y1 < y2 <= tile.shape[0]
        inside = tile[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
        assert np.abs(inside - np.array([96, 138, 70])).max() > 12


def test_camera_projection_inverts_the_warp() -> None:
    camera = ObliqueCamera(heading=33.0, keep=0.5, tilt=0.3, center=(0.4, 0.6))
    canvas, out = 200, 50
    h = camera._view_to_canvas(canvas, out)
    for view_point in [(0.0, 0.0), (25.0, 25.0), (49.0, 10.0)]:
        u, v, w = h @ np.array([*view_point, 1.0])
        np.testing.assert_allclose(camera.project((u / w, v / w), canvas, out), view_point, atol=1e-6)
