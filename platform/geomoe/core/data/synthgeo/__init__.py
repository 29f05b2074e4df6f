"""synthgeo: a procedural geo-localization benchmark written in the real datasets' on-disk layouts.

``generate(out, spec)`` writes, under ``out``:
- ``geotext/``: GeoText-1652 layout (images/<split>/<building>/..., train.json, test_951_version.json), plus
  ``gallery_captions.parquet``: a caption store of the test images written from the scene graph, standing in
  for a perfect captioner (CGRS re-ranking's upper bound);
- ``track4/``: RoboSense Track 4 layout (queries.txt, gallery/image_<8 hex>.jpeg) plus ``labels.json``, the
  answer key the challenge keeps hidden (query -> target image and building, gallery -> building, platform);
- ``cvogl/CVOGL_DroneAerial/``: CVOGL layout (split .pth files of 8-tuples, query/, satellite/);
- ``synthgeo.json``: the spec and the counts generated, which the readers must reproduce.
Deterministic for a spec: every building and tile draws from its own seeded generator.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geomoe.core import ownership, storage
from geomoe.core.config import SynthSpec
from geomoe.core.data.caption_store import write_caption_store
from geomoe.core.data.cvogl import write_cvogl_split
from geomoe.core.data.geotext import write_geotext_annotations
from geomoe.core.data.synthgeo.captions import (
    TEST_QUERY,
    TRAIN_CAPTION,
    neutral_query,
    scene_caption,
    vocabulary_overlap,
)
from geomoe.core.data.synthgeo.render import render_drone, render_ground, render_satellite
from geomoe.core.data.synthgeo.scene import CONFLICTING_FACADE, CONFLICTING_ROOF, Building, sample_building, twin_of
from geomoe.core.data.synthgeo.tiles import cell_kinds, render_query, render_tile, sample_tile, with_cell_kinds
from geomoe.core.data.track4 import write_queries
from geomoe.core.data.transforms import split_sentences
from geomoe.core.storage import write_json_atomic

log = logging.getLogger(__name__)
MANIFEST = "synthgeo.json"
GEOTEXT_TEST_FILE = "test_951_version.json"
GALLERY_CAPTIONS = "gallery_captions.parquet"
VERSION = 3  # 2: + gallery_captions.parquet; 3: platform-specific attributes and captions. Another is regenerated
PLANTED_CAPTION_GAP, PLANTED_CONFLICT, PLANTED_QUERY_CUE = 1, 2, 3  # the planted effects' generator tags
PLANTED_TWINS, PLANTED_CELL_KINDS = 4, 5


def _views(
    b: Building, spec: SynthSpec, rng: np.random.Generator, conflicted: bool = False
) -> list[tuple[str, str, Image.Image]]:
    """(file name, platform, image) for every view of one building, in GeoText-1652 naming; ``conflicted``: the
    drone paints the roof and the ground the facade in permuted colours (the platform-conflict world)."""
    size = spec.image_size
    drone_b = replace(b, roof_color=CONFLICTING_ROOF[b.roof_color]) if conflicted else b
    ground_b = replace(b, facade=CONFLICTING_FACADE[b.facade]) if conflicted else b
    views = [(f"{b.building_id}.jpg", "satellite", render_satellite(b, size, rng))]
    views += [(f"image-{i + 1:02d}.jpeg", "drone", render_drone(drone_b, size, rng)) for i in range(spec.drone_views)]
    views += [
        (f"street-{i + 1:02d}.jpg", "ground", render_ground(ground_b, size, rng)) for i in range(spec.ground_views)
    ]
    return views


def _planted_draw(spec: SynthSpec, building_id: str, effect: int) -> np.random.Generator:
    """A planted effect's own generator per building: at the default strengths nothing is drawn from it, so the
    default world is synthgeo as it always was, draw for draw; a planted world keeps every building's attributes
    and pixels (but those the effect repaints), while its caption words after the first rewritten one differ."""
    return np.random.default_rng([spec.seed, int(building_id), effect])


def _mixed(
    count: int, share: float, coins: np.random.Generator, usual: Callable[[], str], other: Callable[[], str]
) -> list[str]:
    """``count`` texts, each ``usual()``, or ``other()`` with probability 1 - ``share`` (decided by ``coins``, of
    which nothing is drawn at share 1: the default world's draws stay as they were)."""
    return [usual() if share >= 1 or coins.random() < share else other() for _ in range(count)]


def _twin_or_own(spec: SynthSpec, before: Building, own: Building) -> tuple[Building, bool]:
    """The second building of a pair: the first's attribute twin with probability ``planted.attribute_twins``
    (nothing drawn at 0), else its own; and whether it is a twin."""
    share = spec.planted.attribute_twins
    draw = _planted_draw(spec, own.building_id, PLANTED_TWINS)
    if share <= 0 or draw.random() >= share:
        return own, False
    return twin_of(before, own.building_id, draw), True


def _train_captions(
    b: Building, platform: str, spec: SynthSpec, rng: np.random.Generator, coins: np.random.Generator
) -> list[str]:
    """A training image's captions: generic and verbose, or (the caption-gap world's share 1 - gap) worded like a
    test query of its platform."""
    generic, query_like = (lambda: TRAIN_CAPTION[platform](b, rng)), (lambda: TEST_QUERY[platform](b, rng))
    return _mixed(spec.train_captions, spec.planted.caption_gap, coins, generic, query_like)


def _test_queries(
    b: Building, platform: str, spec: SynthSpec, rng: np.random.Generator, coins: np.random.Generator
) -> list[str]:
    """A test image's queries: worded for its platform, or (the query-cue world's share 1 - cue) neutral: the same
    attributes and words whatever the platform of the image asked for."""
    cued, neutral = (lambda: TEST_QUERY[platform](b, rng)), (lambda: neutral_query(b, coins))
    return _mixed(spec.test_captions, spec.planted.query_platform_cue, coins, cued, neutral)


SCENE_CAPTIONER = "synthgeo-scene-graph"


def _write_retrieval_split(
    root: Path, split: str, ids: list[str], spec: SynthSpec, counts: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Annotation entries of one split, and scene-graph captions of its images (one per image)."""
    entries: list[dict[str, Any]] = []
    described: list[dict[str, str]] = []
    before: Building | None = None
    for at, building_id in enumerate(ids):
        rng = np.random.default_rng([spec.seed, int(building_id)])
        building = sample_building(building_id, rng)  # drawn always: a twin's views and captions draw as before
        if at % 2 == 1 and before is not None:
            building, twinned = _twin_or_own(spec, before, building)
            counts[split]["twins"] += twinned
        before = building
        conflict = spec.planted.platform_conflict
        conflicted = conflict > 0 and _planted_draw(spec, building_id, PLANTED_CONFLICT).random() < conflict
        caption_coins = _planted_draw(spec, building_id, PLANTED_CAPTION_GAP)
        query_coins = _planted_draw(spec, building_id, PLANTED_QUERY_CUE)
        for name, platform, image in _views(building, spec, rng, conflicted):
            image_id = f"{building_id}/{name}"
            path = root / "images" / split / image_id
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=92)
            counts[split]["images"][platform] += 1
            scene = scene_caption(building, platform)
            described.append({"image_id": image_id, "caption": scene, "model_id": SCENE_CAPTIONER, "prompt_sha256": ""})
            if split == "train":
                for caption in _train_captions(building, platform, spec, rng, caption_coins):
                    entries.append(
                        {
                            "image_id": image_id,
                            "image": f"{split}/{image_id}",
                            "caption": caption,
                            "sentences": split_sentences(caption),
                            "bboxes": None,
                        }
                    )
            else:
                captions = _test_queries(building, platform, spec, rng, query_coins)
                entries.append({"image_id": image_id, "image": f"{split}/{image_id}", "caption": captions})
        counts[split]["buildings"] += 1
    counts[split]["pairs"] = sum(len(e["caption"]) if isinstance(e["caption"], list) else 1 for e in entries)
    return entries, described


def _overlap(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Per pair of platforms, the Jaccard overlap of the content words of their captions."""
    texts: dict[str, list[str]] = {"satellite": [], "drone": [], "ground": []}
    for entry in entries:
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        texts[_platform_of(entry["image_id"])] += captions
    return vocabulary_overlap(texts)


def _platform_of(image_id: str) -> str:
    name = image_id.split("/")[1]
    return "drone" if name.startswith("image-") else ("ground" if name.startswith("street-") else "satellite")


def _gallery_id(image_id: str) -> str:
    return "image_" + hashlib.sha256(image_id.encode()).hexdigest()[:8]


def _write_track4(root: Path, geotext_root: Path, test_entries: list[dict[str, Any]]) -> dict[str, int]:
    """Track 4 layout from the synthetic test split: every test caption is a query for its image."""
    gallery_dir = root / "gallery"
    gallery_dir.mkdir(parents=True)
    queries: list[tuple[str, str]] = []
    labels: dict[str, dict[str, Any]] = {"queries": {}, "gallery": {}}
    for entry in test_entries:
        gid = _gallery_id(entry["image_id"])
        (gallery_dir / f"{gid}.jpeg").write_bytes((geotext_root / "images" / entry["image"]).read_bytes())
        building = entry["image_id"].split("/")[0]
        platform = _platform_of(entry["image_id"])
        labels["gallery"][gid] = {"building": building, "platform": platform, "source": entry["image_id"]}
        for caption in entry["caption"]:
            qid = f"q_{len(queries) + 1:05d}"
            queries.append((qid, caption))
            labels["queries"][qid] = {"image": gid, "building": building}
    write_queries(root / "queries.txt", queries)
    write_json_atomic(root / "labels.json", labels)
    return {"queries": len(queries), "gallery": len(labels["gallery"])}


def _write_cvogl(root: Path, spec: SynthSpec) -> dict[str, int]:
    base = root / "CVOGL_DroneAerial"
    (base / "query").mkdir(parents=True)
    (base / "satellite").mkdir(parents=True)
    counts, sample_id = {}, 100000
    for split_index, (split, n) in enumerate(
        (("train", spec.localization_train), ("val", spec.localization_val), ("test", spec.localization_test))
    ):
        entries = []
        for i in range(n):
            rng = np.random.default_rng([spec.seed, 7_000_000 + split_index * 100_000 + i])
            objects = sample_tile(rng)
            target = objects[int(rng.integers(0, len(objects)))]
            east, north = 500_000 + 300 * sample_id % 90_000, 4_800_000 + 7 * sample_id % 90_000
            tile_name, query_name = f"{east}_{north}_300_32615.jpg", f"{sample_id}_{east}_{north}.jpg"
            tile = render_tile(objects, spec.tile_size, rng)
            if spec.planted.cell_kinds > 0:  # its own generator: the default world's draws stay as they were
                kinds = cell_kinds(
                    spec.planted.cell_kinds, np.random.default_rng([spec.seed, sample_id, PLANTED_CELL_KINDS])
                )
                tile = with_cell_kinds(tile, kinds)
            tile.save(base / "satellite" / tile_name, quality=92)
            query, (cx, cy) = render_query(objects, target, spec.tile_size, spec.query_size, rng)
            query.save(base / "query" / query_name, quality=92)
            x1, y1, x2, y2 = (v * spec.tile_size for v in target.bounds())
            polygon = [x1, y1, x2, y1, x2, y2, x1, y2]
            # the 4th field is the click at twice the query scale (inferred from CVOGL's own tuples)
            entries.append(
                (
                    sample_id,
                    query_name,
                    tile_name,
                    (round(2 * cx), round(2 * cy)),
                    (round(cx), round(cy)),
                    [x1, y1, x2, y2],
                    polygon,
                    target.class_name,
                )
            )
            sample_id += 1
        write_cvogl_split(root, "DroneAerial", split, entries)
        counts[split] = len(entries)
    return counts


def generate(
    out: str | Path, spec: SynthSpec, force: bool = False, claim: ownership.Claim | None = None
) -> dict[str, Any]:
    """Write all three layouts into the folder ``out`` and return the counts (also saved in its manifest).

    ``out`` must be absent, empty or geomoe's own output (``claim`` names the spec key a refusal quotes). If it
    already holds a benchmark generated from the same spec, nothing is written (unless ``force``).
    """
    claim = claim or ownership.Claim("data.synthesize.output_dir", stage="synth")
    ownership.check_dir(out, claim)
    existing = storage.read_json_if_exists(storage.join(out, MANIFEST))
    generated = spec.keyed_dump()
    del generated["output_dir"]  # where it is written does not change what is written
    fresh = existing is not None and existing.get("spec") == generated and existing.get("version") == VERSION
    if fresh and not force:
        assert existing is not None
        log.info("synthgeo already generated at %s; reusing it", out)
        return dict(existing["counts"])
    n_train, n_test = spec.train_buildings, spec.test_buildings
    train_ids = [f"{i + 1:04d}" for i in range(n_train)]
    test_ids = [f"{i + 1:04d}" for i in range(n_train, n_train + n_test)]
    counts: dict[str, Any] = {
        s: {"buildings": 0, "twins": 0, "pairs": 0, "images": {"satellite": 0, "drone": 0, "ground": 0}}
        for s in ("train", "test")
    }
    with ownership.atomic_dir(out, claim, MANIFEST) as tmp:  # written locally, then published (the manifest last)
        geotext = tmp / "geotext"
        train, _ = _write_retrieval_split(geotext, "train", train_ids, spec, counts)
        test, test_captions = _write_retrieval_split(geotext, "test", test_ids, spec, counts)
        write_caption_store(str(geotext / GALLERY_CAPTIONS), test_captions)
        write_geotext_annotations(geotext, "train.json", train)
        write_geotext_annotations(geotext, GEOTEXT_TEST_FILE, test)
        result = {
            "geotext": counts,
            "vocabulary_overlap": {"train": _overlap(train), "test": _overlap(test)},
            "track4": _write_track4(tmp / "track4", geotext, test),
            "cvogl": _write_cvogl(tmp / "cvogl", spec),
        }
        write_json_atomic(tmp / MANIFEST, {"spec": generated, "version": VERSION, "counts": result})
    return result
