"""LLM caption refinement on Ray Data with the transformers engine and a tiny random Llama built here:
every training row is refined or kept with a reason, queries are untouched, and a rerun resumes per shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from geomoe.config import JobSpec, parse_spec
from geomoe.models.tiny import build_tiny_causal_lm
from geomoe.pipelines.prepare import prepare
from geomoe.pipelines.refine import refine_captions


def refine_job(root: Path, out: Path, model: Path) -> JobSpec:
    raw = {
        "name": "refine_t",
        "stages": ["prepare", "refine"],
        "data": {"format": "geotext", "root": str(root / "geotext")},
        "preprocess": {"output_dir": str(out / "prepared"), "satellite_copies": 1},
        "refine": {
            "engine": {"kind": "transformers", "model": str(model), "max_new_tokens": 12, "batch_size": 4},
            "output_dir": str(out / "refined"),
            "min_words": 1,
            "max_words": 40,
        },
        "resources": {"data_concurrency": 1},
    }
    return parse_spec(JobSpec, raw, "test")


def rows(manifest: dict, split: str) -> list[dict]:
    table = pads.dataset(manifest["table"], format="parquet", partitioning="hive").to_table(
        filter=pc.field("split") == split
    )
    return table.to_pylist()


def test_refinement_replaces_only_valid_outputs_and_resumes(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_synth
    prepared_spec = refine_job(root, tmp_path, tmp_path / "lm")
    manifest = prepare(prepared_spec)
    build_tiny_causal_lm(tmp_path / "lm", [r["caption"] for r in rows(manifest, "train")])
    refined = refine_captions(prepared_spec, manifest)
    report = refined["refinement"]
    before, after = rows(manifest, "train"), rows(refined, "train")
    assert len(after) == len(before) and report["rows_refined"] + report["rows_kept"] == len(before)
    assert report["rows_refined"] > 0  # the replacing path ran (the kept path: tests/unit/test_engines.py)
    assert report["shards_refined"] == 3 and report["shards_reused"] == 0  # one shard per platform
    for row in after:
        assert row["refine_status"] == "refined" or row["caption"] == row["original_caption"]
        if row["refine_status"] == "refined":
            assert 1 <= len(row["caption"].split()) <= 40 and row["statements"] == [row["caption"]]
    assert set(report["kept_by_reason"]) <= {"empty", "too short", "too long", "chat boilerplate", "engine failed"}
    assert sorted(r["caption"] for r in rows(refined, "test")) == sorted(r["caption"] for r in rows(manifest, "test"))
    assert len(report["prompts_sha256"]) == 64
    # a killed job resumes: finished shards are not redone, a missing one is
    shard = next((Path(refined["table"]) / "split=train" / "platform=drone").glob("*.parquet"))
    shard.unlink()
    again = refine_captions(prepared_spec, manifest)["refinement"]
    assert again["shards_refined"] == 1 and again["shards_reused"] == 2
    redone = {r["original_caption"]: r["caption"] for r in rows(refine_captions(prepared_spec, manifest), "train")}
    assert redone == {r["original_caption"]: r["caption"] for r in after}  # greedy decoding: the same outputs
    from geomoe.jobs import _training_data

    assert _training_data(prepared_spec, {})["table"] == refined["table"]  # training reads the refined captions
