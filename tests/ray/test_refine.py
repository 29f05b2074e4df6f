"""LLM caption refinement on Ray Data with the transformers engine and a tiny random Llama built here:
every training row is refined or kept with a reason, queries are untouched, and a rerun resumes per shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.transforms import normalize_caption
from geomoe.core.models.tiny import build_tiny_causal_lm
from geomoe.on_ray.pipelines.prepare import prepare
from geomoe.on_ray.pipelines.refine import refine_captions
from ports import start_serve


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


def with_engine(spec: JobSpec, engine: dict, output_dir: Path) -> JobSpec:
    assert spec.refine is not None
    refine = {**spec.refine.model_dump(mode="json"), "engine": engine, "output_dir": str(output_dir)}
    return parse_spec(JobSpec, {**spec.model_dump(mode="json"), "refine": refine}, "test")


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
            assert 1 <= len(row["caption"].split()) <= 40 and row["statements"]
            # split into statements like a prepared caption (tests/unit/test_engines.py: exactly how), normalised
            assert all(s and s == normalize_caption(s) for s in row["statements"])
    reasons = {"empty", "too short", "too long", "chat boilerplate", "engine failed"}
    # the tiny LLM's vocabulary has synthgeo's satellite directions: an augmented (rotated) satellite row's output
    # that names one is kept, never trained on
    reasons.add("new directional phrase on an augmented satellite sample")
    assert set(report["kept_by_reason"]) <= reasons
    assert sorted(r["caption"] for r in rows(refined, "test")) == sorted(r["caption"] for r in rows(manifest, "test"))
    assert len(report["prompts_sha256"]) == 64
    # a killed job resumes: finished shards are not redone, a missing one is
    shard = next((Path(refined["table"]) / "split=train" / "platform=drone").glob("*.parquet"))
    shard.unlink()
    again = refine_captions(prepared_spec, manifest)["refinement"]
    assert again["shards_refined"] == 1 and again["shards_reused"] == 2
    redone = {r["original_caption"]: r["caption"] for r in rows(refine_captions(prepared_spec, manifest), "train")}
    assert redone == {r["original_caption"]: r["caption"] for r in after}  # greedy decoding: the same outputs
    from geomoe.core.job_results import JobResults
    from geomoe.on_ray.jobs import _training_data

    folders = prepared_spec.preprocess.output_dir, prepared_spec.refine.output_dir
    assert _training_data(*folders, JobResults()).table == refined["table"]  # training reads the refined captions


def test_http_engine_refines_through_an_openai_compatible_server_and_counts_failures(
    tiny_synth: tuple[Path, dict], tmp_path: Path
) -> None:
    """ray.data.llm's HTTP processor against a tiny Llama served by Ray Serve on 127.0.0.1; then against a
    port where nothing listens: every request fails after its retries and every row is counted, none lost."""
    from geomoe.on_ray.serving.chat import chat_app
    from ray import serve

    root, _ = tiny_synth
    spec = refine_job(root, tmp_path, tmp_path / "lm")
    manifest = prepare(spec)
    build_tiny_causal_lm(tmp_path / "lm", [r["caption"] for r in rows(manifest, "train")])
    engine = {
        "kind": "http",
        "model": "tiny",
        "max_new_tokens": 12,
        "batch_size": 4,
        "max_retries": 1,
        "retry_wait_s": 0.01,
    }
    try:
        url = f"{start_serve()}/v1/chat/completions"
        serve.run(chat_app(str(tmp_path / "lm")), name="chat", route_prefix="/v1/chat/completions", blocking=False)
        good = with_engine(spec, {**engine, "url": url}, tmp_path / "r1")
        report = refine_captions(good, manifest)["refinement"]
        n = len(rows(manifest, "train"))
        assert report["rows_refined"] > 0 and report["rows_refined"] + report["rows_kept"] == n
    finally:
        serve.shutdown()
    bad = with_engine(spec, {**engine, "url": "http://127.0.0.1:9/v1/chat/completions"}, tmp_path / "r2")
    failed = refine_captions(bad, manifest)
    assert failed["refinement"]["kept_by_reason"] == {"engine failed": n} and failed["refinement"]["rows_refined"] == 0
    assert [r["caption"] for r in rows(failed, "train")] == [r["original_caption"] for r in rows(failed, "train")]
