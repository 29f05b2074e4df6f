"""PE-MoE training on Ray Train: a fit with checkpoints, a killed worker, a resumed rerun, mining, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from checks import assert_share_interval
from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.job_results import Checkpoint
from geomoe.core.metrics import recall_at_k
from geomoe.core.models.checkpoint import read_checkpoint
from geomoe.families.pe_moe.driver import ensure_tiny, evaluate_checkpoint, fit_stage, mine_negatives, split_rows
from geomoe.families.pe_moe.report import retrieval_table
from geomoe.families.pe_moe.results import PEMoEResult
from geomoe.families.pe_moe.spec import PEMoEModelSpec
from geomoe.on_ray.pipelines.image_store import PreparedImages
from geomoe.on_ray.pipelines.prepare import prepare
from tiny_jobs import pe_moe_job as make_spec


@pytest.fixture(scope="module")
def prepared(tiny_synth: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, dict]:
    """A prepared copy of the session's synthgeo whose source images are then removed: every test of this module
    trains, mines, evaluates and indexes from the prepared image table alone."""
    root, _ = tiny_synth
    work = tmp_path_factory.mktemp("train")
    shutil.copytree(root / "geotext", work / "synth" / "geotext")
    spec = make_spec(work / "synth", work)
    manifest = prepare(spec)
    shutil.rmtree(work / "synth")
    ensure_tiny(spec.model_as(PEMoEModelSpec), PreparedDataset.of(manifest), spec.preprocess.max_words_train)
    return spec, manifest


def images_of(manifest: dict) -> PreparedImages:
    return PreparedImages(PreparedDataset.of(manifest))


@pytest.fixture(scope="module")
def stage1(prepared: tuple[JobSpec, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Checkpoint]:
    """One finished stage 1 (its run folder and record), shared by the tests that start from a stage-1 model."""
    spec, manifest = prepared
    run_dir = tmp_path_factory.mktemp("stage1") / "run"
    table = split_rows(PreparedDataset.of(manifest), "train", spec.model_as(PEMoEModelSpec))
    return run_dir, fit_stage(spec, run_dir, 1, table, None, images_of(manifest))


def test_killed_worker_resumes_from_last_checkpoint(prepared: tuple[JobSpec, dict], tmp_path: Path) -> None:
    spec, manifest = prepared
    table = split_rows(PreparedDataset.of(manifest), "train", spec.model_as(PEMoEModelSpec))
    marker = tmp_path / "killed"
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"stage1_epochs": 3})})
    hooks = {"fail_once_at": {"at": [2, 2], "marker": str(marker)}}  # kill a worker mid-way through epoch 2
    record = fit_stage(spec, tmp_path / "run", 1, table, None, images_of(manifest), test_hooks=hooks)
    assert marker.exists(), "the fault was never injected"
    assert record.metrics["epoch"] == 2
    assert record.metrics["start_epoch"] >= 1  # the restarted group resumed from a checkpoint, not from scratch
    payload = read_checkpoint(record.location)
    assert payload["stage"] == 1 and payload["epoch"] == 2 and payload["spec"]["name"] == "t"


def test_rerun_of_finished_stage_resumes_instead_of_restarting(
    prepared: tuple[JobSpec, dict], stage1: tuple[Path, Checkpoint], tmp_path: Path
) -> None:
    spec, manifest = prepared
    table = split_rows(PreparedDataset.of(manifest), "train", spec.model_as(PEMoEModelSpec))
    images = images_of(manifest)
    first = fit_stage(spec, tmp_path / "run", 1, table, None, images)
    # the same spec trained again in another folder (the shared stage-1 fixture), on 2 workers: the same weights
    same = read_checkpoint(stage1[1].location)["model"]
    assert all(torch.equal(tensor, same[name]) for name, tensor in read_checkpoint(first.location)["model"].items())
    assert first.metrics["loss"] == stage1[1].metrics["loss"]
    again = fit_stage(spec, tmp_path / "run", 1, table, None, images)  # the recorded result: nothing is retrained
    assert again == first and again.to_json() == json.loads(json.dumps(first.to_json()))
    (tmp_path / "run" / "stage1.json").unlink()  # without the record, Ray Train itself restores the run
    restored = fit_stage(spec, tmp_path / "run", 1, table, None, images)
    # Ray Train finds the finished run in its folder and returns its last checkpoint: nothing is trained again
    assert restored.location == first.location and restored.metrics == first.metrics


def test_mining_then_stage2_then_evaluation(
    prepared: tuple[JobSpec, dict], stage1: tuple[Path, Checkpoint], tmp_path: Path
) -> None:
    spec, manifest = prepared
    table = split_rows(PreparedDataset.of(manifest), "train", spec.model_as(PEMoEModelSpec))
    run_dir, first = stage1
    images = images_of(manifest)
    mined = mine_negatives(spec, first.location, table, images)
    for row in mined.to_pylist():
        negative_buildings = {Path(p).parent.name for p in row["negative_paths"]}
        assert row["building_id"] not in negative_buildings and len(row["negative_paths"]) == spec.train.hard_negatives
    stage2 = fit_stage(spec, run_dir, 2, mined, first.location, images)
    assert read_checkpoint(stage2.location)["stage"] == 2
    report = evaluate_checkpoint(spec, stage2.location, PreparedDataset.of(manifest))
    n_test = (
        split_rows(PreparedDataset.of(manifest), "test", spec.model_as(PEMoEModelSpec))
        .filter(pc.equal(pc.field("augment"), ""))
        .num_rows
    )
    assert report["counts"]["queries"] == n_test
    for protocol in ("exact", "building"):
        entry = report["retrieval"][protocol]
        assert set(entry["t2i"]) == {"R@1", "R@5", "R@10"}
        # each number with its bootstrap interval, and the per-query ranks it is recomputed from
        assert set(entry["t2i_interval"]) == {"R@1", "R@5", "R@10", "Score"} and len(entry["t2i_ranks"]) == n_test
        for k in ("R@1", "R@5", "R@10"):  # R@K: the share of queries with a hit in the top K
            assert_share_interval(entry["t2i"][k], entry["t2i_interval"][k], n_test)
        assert recall_at_k(np.array(entry["t2i_ranks"]), (1, 5, 10)) == pytest.approx(entry["t2i"])
    # the job's table prints the intervals and pairs stage 2 with stage 1 over the same queries
    stage1_report = evaluate_checkpoint(spec, first.location, PreparedDataset.of(manifest))
    assert stage1_report["query_set"] == report["query_set"]
    table = retrieval_table({"model": PEMoEResult.of({"stage1": stage1_report, "stage2": report})})
    assert "paired differences (95% interval; * = excludes 0):" in table and "model stage2 - stage1" in table
    assert "routing_accuracy" in report  # its value on hand-made gates: tests/unit/test_mining_eval.py


def test_track4_submission_from_checkpoint(
    stage1: tuple[Path, Checkpoint], tiny_synth: tuple[Path, dict], tmp_path: Path
) -> None:
    import zipfile

    from geomoe.core.data.records import RejectLog
    from geomoe.core.data.track4 import list_gallery, read_queries
    from geomoe.families.pe_moe.spec import Track4Spec
    from geomoe.families.pe_moe.submit import submit_track4

    root, counts = tiny_synth
    track4 = Track4Spec(
        queries=str(root / "track4/queries.txt"), gallery=str(root / "track4/gallery"), output_dir=str(tmp_path / "sub")
    )
    result = submit_track4(stage1[1].location, track4)
    lines = Path(result["submission"]).read_text().splitlines()
    queries = read_queries(track4.queries, RejectLog())
    gallery = {g for g, _ in list_gallery(track4.gallery, RejectLog())}
    assert len(lines) == len(queries) == counts["track4"]["queries"]
    for line, (qid, _) in zip(lines, queries, strict=True):
        fields = line.split(" ")
        assert fields[0] == f"q{int(qid[2:])}" and len(fields) == 11 and set(fields[1:]) <= gallery
    with zipfile.ZipFile(result["zip"]) as bundle:
        assert bundle.read("submission.txt").decode().splitlines() == lines
    # queries are normalised like the prepared test queries: shouting and punctuation change nothing
    from geomoe.core.data.track4 import write_queries
    from geomoe.families.pe_moe.submit import rank_track4

    shouted = tmp_path / "shouted.txt"
    write_queries(shouted, [(qid, f"{text.upper()}!!") for qid, text in queries])
    plain = rank_track4(stage1[1].location, track4)
    assert rank_track4(stage1[1].location, track4.model_copy(update={"queries": str(shouted)})) == plain


def test_index_search_returns_the_offline_fused_ranking(prepared: tuple[JobSpec, dict], tmp_path: Path) -> None:
    """The index stage on Ray Data embeds the gallery into one matrix; a search with [g_k t_k] must rank exactly
    as Eq. 1 computed per expert by the offline evaluator's functions, and FAISS flat must agree with it."""
    import torch

    from geomoe.core.models.checkpoint import save_checkpoint
    from geomoe.families.pe_moe.encode import embed_texts
    from geomoe.families.pe_moe.factory import build_pe_moe
    from geomoe.families.pe_moe.index import query_rows, read_index
    from geomoe.families.pe_moe.model import fused_scores
    from geomoe.families.pe_moe.pipelines import _queries, build_index, embed_images

    spec, manifest = prepared
    torch.manual_seed(0)
    model, tokenizer = build_pe_moe(
        spec.model_as(PEMoEModelSpec)
    )  # untrained heads: the ranking contract does not need training
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(tmp_path / "ckpt", model, spec, 1, 0)
    raw = spec.model_dump(mode="json") | {
        "index": {"output_dir": str(tmp_path / "index"), "dtype": "float32", "faiss": ["flat", "hnsw"]}
    }
    report = build_index(parse_spec(JobSpec, raw, "test"), manifest, str(tmp_path / "ckpt"))
    index = read_index(tmp_path / "index")
    assert report["count"] == len(index.ids) and index.manifest.checkpoint_sha256 == report["checkpoint_sha256"]
    assert report["faiss"]["flat"]["recall@10_vs_exact"] == 1.0
    assert report["faiss"]["hnsw"]["recall@10_vs_exact"] >= 0.99  # docs/serving.md's claim for the serving index
    paths = dict(zip(*pc_ids_paths(manifest), strict=True))
    gallery = [paths[i] for i in index.ids]
    fetch = images_of(manifest).fetch  # the source images are gone: their bytes come from the prepared table
    v = embed_images(str(tmp_path / "ckpt"), gallery, batch_size=5, fetch=fetch)  # on a Ray Data actor pool
    in_driver = embed_images(str(tmp_path / "ckpt"), gallery, batch_size=7, in_driver_max=len(gallery), fetch=fetch)
    np.testing.assert_allclose(in_driver, v, rtol=0, atol=1e-6)  # the same vectors in the same order, without a pool
    queries = _queries(manifest, "test")
    t, g = embed_texts(model.eval(), tokenizer, queries, spec.model_as(PEMoEModelSpec).text.max_length)
    expected = np.argsort(-fused_scores(t, v, g), axis=1, kind="stable")[:, :10]
    found = index.search(query_rows(t, g), 10)
    assert [[image_id for image_id, _ in hits] for hits in found] == [[index.ids[n] for n in row] for row in expected]


def pc_ids_paths(manifest: dict) -> tuple[list[str], list[str]]:
    from geomoe.on_ray.pipelines.caption import gallery_images

    images = gallery_images(manifest, "test")
    return [im["image_id"] for im in images], [im["image_path"] for im in images]


def test_training_inputs_come_in_plan_order_whatever_finishes_first(tmp_path: Path) -> None:
    """Ray Data passes blocks on as their tasks finish; a training input (``in_order``) keeps the plan's order,
    so a seed reproduces the batches. The first block's task waits on an event, not a timer: without ``in_order``
    until the consumer has received another block, with it until every other block's task has finished."""
    import time

    import pyarrow as pa
    import ray.data

    from geomoe.on_ray.ray_env import in_order

    def first_block_last(batch: dict[str, np.ndarray], run: str, after: str) -> dict[str, np.ndarray]:
        first, folder = int(batch["i"][0]), tmp_path / run
        if first:
            (folder / f"done-{first}").touch()
            return batch

        def happened() -> bool:
            return (folder / "consumed").exists() if after == "consumed" else len(list(folder.glob("done-*"))) == 3

        deadline = time.monotonic() + 60  # at most a minute: then the asserts below fail
        while not happened() and time.monotonic() < deadline:
            time.sleep(0.01)
        return batch

    def decoded(run: str, after: str) -> ray.data.Dataset:
        (tmp_path / run).mkdir()
        blocks = [pa.table({"i": list(range(4 * k, 4 * k + 4))}) for k in range(4)]
        return ray.data.from_arrow(blocks).map_batches(
            first_block_last, fn_kwargs={"run": run, "after": after}, batch_size=4, num_cpus=0.5
        )

    as_finished: list[int] = []
    for batch in decoded("plain", after="consumed").iter_batches(batch_size=None):
        as_finished += batch["i"].tolist()
        (tmp_path / "plain" / "consumed").touch()  # the first block's task may finish now
    assert sorted(as_finished) == list(range(16)) and as_finished[:4] != [0, 1, 2, 3]  # the first block came later
    ordered = in_order(decoded("ordered", after="the others"))  # the first block finishes after all the others
    assert [row["i"] for row in ordered.materialize().take_all()] == list(range(16))
