"""Gallery captioning on Ray Data with a tiny random image-to-text model built here: every image is captioned
or counted by reason, and the store is what re-ranking reads."""

from __future__ import annotations

from pathlib import Path

from geomoe.config import JobSpec, parse_spec
from geomoe.data.caption_store import read_caption_store
from geomoe.models.tiny import build_tiny_captioner
from geomoe.pipelines.caption import caption_gallery, gallery_images
from geomoe.pipelines.prepare import prepare


def test_gallery_captioning_writes_a_store_and_counts_failures(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    model = build_tiny_captioner(tmp_path / "vlm", ["a red roof building", "drone view of a grey building"], 32)
    raw = {
        "name": "caption_t",
        "stages": ["prepare", "caption"],
        "data": {"format": "geotext", "root": str(root / "geotext")},
        "preprocess": {"output_dir": str(tmp_path / "prepared")},
        "caption": {
            "engine": {"kind": "transformers", "model": str(model), "max_new_tokens": 8, "batch_size": 4},
            "output": str(tmp_path / "captions.parquet"),
            "max_words": 3,
        },
        "resources": {"data_concurrency": 1},
    }
    spec = parse_spec(JobSpec, raw, "test")
    manifest = prepare(spec)
    report = caption_gallery(spec, manifest)
    images = gallery_images(manifest, "test")
    assert report["images"] == len(images) == sum(counts["geotext"]["test"]["images"].values())
    assert report["captioned"] + sum(report["failed_by_reason"].values()) == report["images"]
    assert set(report["failed_by_reason"]) <= {"empty", "too long", "chat boilerplate", "engine failed"}
    store = read_caption_store(tmp_path / "captions.parquet") if report["captioned"] else {}
    assert len(store) == report["captioned"] and all(len(c[0].split()) <= 3 for c in store.values())
