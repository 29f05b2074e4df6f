"""synthgeo writes the three real layouts; the real readers read back exactly the counts it reports."""

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from geomoe.core.config import DEFAULT_PLATFORM_RULES, SynthSpec
from geomoe.core.data.cvogl import read_cvogl
from geomoe.core.data.geotext import PlatformClassifier, read_geotext
from geomoe.core.data.records import RejectLog
from geomoe.core.data.synthgeo import generate
from geomoe.core.data.synthgeo.render import ObliqueCamera
from geomoe.core.data.track4 import list_gallery, read_queries

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


# Words that name an attribute only one platform's view shows (scene.VISIBLE), and where they may appear.
ONLY_FROM = {
    "ground": ("door", "doorway", "sign", "bench", "lamp", "bus stop", "bicycle", "window"),
    "drone": ("solar", "water tank", "antenna"),
    "satellite": ("north", "south", "east", "west", "footprint", "road"),
}
NOT_FROM = {  # shown by two platforms, not by the third
    "satellite": ("facade", "floor", "plaster", "brick", "concrete", "stone", "storey"),
    "ground": ("roof",),
}


def _texts_by_platform(root: Path) -> dict[str, dict[str, list[str]]]:
    texts: dict[str, dict[str, list[str]]] = {}
    for split, name in (("train", "train.json"), ("test", "test_951_version.json")):
        texts[split] = {"satellite": [], "drone": [], "ground": []}
        for record in read_geotext(root / "geotext", split, name, CLASSIFY, RejectLog()):
            texts[split][record.platform].append(record.caption.lower())
    return texts


def test_a_caption_names_only_what_its_platform_sees(tiny_synth: tuple[Path, dict]) -> None:
    """PE-MoE sec. 1 and 3.1: platforms see different things. An attribute only the ground sees (an entrance, a
    sign, street furniture) never appears in a satellite or drone caption; rooftop equipment only in drone ones;
    directions and the layout only in satellite ones; facades never from above, roofs never from the street."""
    texts = _texts_by_platform(tiny_synth[0])
    for split, by_platform in texts.items():
        for platform, captions in by_platform.items():
            assert captions, (split, platform)
            banned = [w for other, words in ONLY_FROM.items() if other != platform for w in words]
            banned += NOT_FROM.get(platform, ())
            for caption in captions:
                found = [w for w in banned if w in caption]
                assert not found, f"{split} {platform} caption names {found}: {caption!r}"


def test_every_visible_attribute_is_drawn_and_described_only_where_visible() -> None:
    """Over many scene graphs: each platform's phrases are exactly its visible attributes, and every attribute a
    platform shows is named by some caption or query of that platform (nothing visible is never described)."""
    from geomoe.core.data.synthgeo.captions import TEST_QUERY, TRAIN_CAPTION, attribute_phrases, scene_caption
    from geomoe.core.data.synthgeo.scene import VISIBLE, sample_building

    named: dict[str, set[str]] = {p: set() for p in VISIBLE}
    for i in range(200):
        rng = np.random.default_rng([3, i])
        building = sample_building(f"{i:04d}", rng)
        for platform in VISIBLE:
            phrases = attribute_phrases(building, platform)
            assert set(phrases) <= set(VISIBLE[platform])
            text = " ".join([TRAIN_CAPTION[platform](building, rng), TEST_QUERY[platform](building, rng)])
            text += " " + scene_caption(building, platform)
            named[platform] |= {k for k, v in phrases.items() if v in text}
    assert {p: named[p] for p in named} == {p: set(v) - ({"extras"} if p == "satellite" else set())
                                             for p, v in VISIBLE.items()}  # fmt: skip


def test_training_captions_are_generic_and_verbose_test_queries_concise_and_platform_specific(
    tiny_synth: tuple[Path, dict],
) -> None:
    texts = _texts_by_platform(tiny_synth[0])
    platform_words = ("satellite", "drone", "street", "ground", "top-down")
    train = [c for cs in texts["train"].values() for c in cs]
    test = [c for cs in texts["test"].values() for c in cs]
    assert not any(w in c for c in train for w in platform_words)  # one generic template for every platform
    assert all(any(w in c for w in platform_words) for c in test)  # every query says its platform
    train_words, test_words = np.mean([len(c.split()) for c in train]), np.mean([len(c.split()) for c in test])
    assert train_words > 1.8 * test_words and test_words < 25


def test_the_platforms_vocabularies_overlap_little_and_the_manifest_reports_it(tiny_synth: tuple[Path, dict]) -> None:
    from geomoe.core.data.synthgeo.captions import vocabulary_overlap

    root, counts = tiny_synth
    texts = _texts_by_platform(root)
    for split in ("train", "test"):
        overlap = vocabulary_overlap(texts[split])
        assert overlap == counts["vocabulary_overlap"][split]
        assert set(overlap) == {"drone|ground", "drone|satellite", "ground|satellite"}
        assert all(0 < v < 0.6 for v in overlap.values()), overlap
    assert counts["vocabulary_overlap"]["test"]["ground|satellite"] < 0.2  # almost nothing in common
