"""Cluster-ready runs: PE-MoE and SMGeo jobs whose data and outputs live only on the S3 server, their two Train
workers on two different nodes; the multi-node guard; storage errors that name the URI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.image_table import read_shard, shard_locations
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import SpecError
from geomoe.families.pe_moe.spec import PEMoEModelSpec
from tiny_jobs import tiny_pe_moe, tiny_smgeo

TRAINER = "trainer_slot"  # the custom resource the worker nodes of tests/cluster/conftest.py carry


def job_raw(data_root: str, out_root: str, models: Path) -> dict[str, Any]:
    """The tiny PE-MoE job: data and outputs at the given locations, tiny models in the declared cache."""
    return {
        "name": "s3run",
        "stages": ["prepare", "train", "index"],
        "output_root": out_root,
        "data": {"format": "geotext", "root": data_root},
        "preprocess": {"output_dir": f"{out_root}/prepared", "satellite_copies": 1},
        "model": tiny_pe_moe(str(models)),
        "train": {"batch_size": 8, "lr": 1e-3, "stage1_epochs": 1, "stage2_epochs": 1, "materialize_inputs": True},
        "index": {"output_dir": f"{out_root}/index", "dtype": "float16"},
        "resources": {
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "data_concurrency": 1,
            "worker_resources": {TRAINER: 1},
            "placement_strategy": "STRICT_SPREAD",
        },
    }


def dataset_in(bucket: str, synth_root: Path, layout: str) -> str:
    """The tiny synthgeo dataset in one layout, uploaded as a user would: its URI in the bucket."""
    ownership.upload_dir(synth_root / layout, f"{bucket}/datasets/{layout}", ownership.Claim("data.root"))
    return f"{bucket}/datasets/{layout}"


def _rows(prepared: PreparedDataset, root: str) -> list[tuple[Any, ...]]:
    """Every prepared row, with its image location made relative to ``root`` (the runs differ only there)."""
    table = prepared.dataset().to_table().to_pylist()
    relative = lambda p: p[len(root) :] if p.startswith(root) else p.rsplit("/", 1)[-1]  # noqa: E731
    return sorted(
        (r["split"], r["image_id"], r["caption_index"], r["augment"], r["caption"], relative(r["image_path"]))
        for r in table
    )


def _augmented_images(prepared: PreparedDataset) -> dict[str, bytes]:
    """The satellite copies' bytes in the prepared image table (they exist nowhere else)."""
    shards = [read_shard(s) for s in shard_locations(prepared.manifest["images"]["table"])]
    return {k: shard.image(i) for shard in shards for i, k in enumerate(shard.keys) if k.startswith("augmented/")}


def _train_workers() -> dict[str, str]:
    """actor id -> node id of every Ray Train worker this cluster has run (alive or finished)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
    return {a.actor_id: a.node_id for a in actors}


def _nodes_of_new_workers(before: dict[str, str]) -> set[str]:
    return {node for actor, node in _train_workers().items() if actor not in before}


def test_pe_moe_job_runs_from_s3_with_workers_on_two_nodes(
    two_node_cluster: Any, s3_bucket: str, tiny_synth: tuple[Path, dict], tmp_path: Path, monkeypatch: Any
) -> None:
    from geomoe.families.pe_moe.driver import evaluate_checkpoint
    from geomoe.on_ray.jobs import run_job
    from geomoe.on_ray.pipelines.prepare import prepare

    root, _ = tiny_synth
    data = dataset_in(s3_bucket, root, "geotext")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the job must write nothing here: every output goes to the bucket
    out = f"{s3_bucket}/runs"
    spec = parse_spec(JobSpec, job_raw(data, out, tmp_path / "models"), "test")
    before = _train_workers()

    results = run_job(spec)

    assert list(cwd.iterdir()) == []
    final = results["train"]["model"]
    assert final["checkpoint"].startswith(f"{out}/s3run/ray_train/stage2/")
    assert storage.is_file(storage.join(final["checkpoint"], "checkpoint.json"))
    assert storage.read_json(f"{out}/s3run/results.json") == json.loads(json.dumps(results))
    assert set(final["stage2"]["retrieval"]) == {"exact", "building"} and final["stage2"]["counts"]["gallery"] > 0
    index = storage.read_json(f"{out}/index/manifest.json")
    assert index["checkpoint"] == final["checkpoint"] and index["count"] == results["index"]["count"] > 0
    worker_nodes = _nodes_of_new_workers(before)
    head = two_node_cluster.head_node.node_id
    assert len(worker_nodes) == 2 and head not in worker_nodes  # STRICT_SPREAD over the two worker nodes

    # The same data prepared on local disk gives the same rows (prepare is deterministic; only locations differ).
    on_s3 = PreparedDataset.open(f"{out}/prepared")
    assert on_s3.table.startswith(f"{out}/prepared/")
    local_raw = job_raw(str(root / "geotext"), str(tmp_path / "local"), tmp_path / "models")
    local_raw["storage"] = {"shared": True}  # true here: the "nodes" are processes on one machine
    local_spec = parse_spec(JobSpec, local_raw, "test")
    local = PreparedDataset.of(prepare(local_spec))
    assert _rows(on_s3, data + "/images/") == _rows(local, str(root / "geotext" / "images") + "/")
    assert _augmented_images(on_s3) == _augmented_images(local)  # the satellite copies, byte for byte
    # The trained model scores the same on the local copy of the data as it did on the bucket's.
    on_disk = evaluate_checkpoint(local_spec, final["checkpoint"], local)["retrieval"]
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(final["stage2"]["retrieval"], sort_keys=True)


def test_multinode_guard_stops_a_local_output_root_before_any_work(
    two_node_cluster: Any, s3_bucket: str, tmp_path: Path, capsys: Any
) -> None:
    from geomoe.cli import main
    from geomoe.on_ray.ray_env import check_shared_storage

    raw = job_raw(f"{s3_bucket}/datasets/geotext", f"{s3_bucket}/runs", tmp_path / "models")
    raw["output_root"] = str(tmp_path / "runs")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))

    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomoe: error: job s3run: output_root: ") and "Traceback" not in err
    assert "local path" in err and "3 nodes" in err and "storage.shared_mounts" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()

    declared = parse_spec(JobSpec, raw | {"storage": {"shared_mounts": [str(tmp_path)]}}, "test")
    check_shared_storage(declared)  # a declared shared mount passes
    with pytest.raises(SpecError, match="output_root"):
        check_shared_storage(parse_spec(JobSpec, raw | {"storage": {"shared_mounts": ["/elsewhere"]}}, "test"))


def test_lost_node_resumes_training_from_the_last_checkpoint_in_s3(
    two_node_cluster: Any, s3_bucket: str, tiny_synth: tuple[Path, dict], tmp_path: Path
) -> None:
    """The node that holds a Train worker is removed during epoch 1, after epoch 0 was checkpointed to S3 (each
    step of epoch 1 pauses, so the run is still going); a new node joins; FailureConfig restarts the worker group,
    which resumes at epoch 1 from that checkpoint."""
    import threading

    from ray.util.state import list_actors

    import ray
    from geomoe.families.pe_moe.driver import ensure_tiny, fit_stage, split_rows
    from geomoe.on_ray.pipelines.image_store import PreparedImages
    from geomoe.on_ray.pipelines.prepare import prepare

    root, _ = tiny_synth
    data = dataset_in(s3_bucket, root, "geotext")
    raw = job_raw(data, f"{s3_bucket}/runs", tmp_path / "models")
    raw["train"] |= {"stage1_epochs": 2, "max_failures": 2, "materialize_inputs": False, "keep_checkpoints": 2}
    spec = parse_spec(JobSpec, raw, "test").with_absolute_paths()
    prepared = PreparedDataset.of(prepare(spec))
    table, images = split_rows(prepared, "train", spec.model_as(PEMoEModelSpec)), PreparedImages(prepared)
    ensure_tiny(spec.model_as(PEMoEModelSpec), prepared, spec.preprocess.max_words_train)
    run_dir = f"{s3_bucket}/runs/s3run"
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["record"] = fit_stage(spec, run_dir, 1, table, None, images, test_hooks={"step_pause_s": 1.0})
        except BaseException as err:  # reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    checkpoints = f"{run_dir}/ray_train/stage1"
    # A checkpoint counts once Train's controller has registered it (an uploaded one it has not seen yet is not
    # resumed from); the controller records its registered checkpoints in this snapshot, in the run's storage.
    registered = f"{checkpoints}/checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    while not (storage.read_json_if_exists(registered) or {}).get("checkpoint_results"):
        assert thread.is_alive() and time.monotonic() < deadline, outcome.get("error", "no checkpoint in time")
        time.sleep(0.5)
    alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], limit=100)
    victim = next(n for n in two_node_cluster.worker_nodes if n.node_id == alive[0].node_id)
    two_node_cluster.remove_node(victim)
    two_node_cluster.add_node(num_cpus=2, resources={TRAINER: 1}, object_store_memory=300_000_000)
    thread.join(timeout=420)

    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    metrics = outcome["record"].metrics
    assert metrics["epoch"] == 1 and metrics["start_epoch"] == 1  # resumed after epoch 0, not restarted
    assert outcome["record"].location.startswith(f"{checkpoints}/")
    assert sum(1 for node in ray.nodes() if node["Alive"]) == 3


def test_smgeo_job_synthesizes_to_s3_and_trains_with_workers_on_two_nodes(
    two_node_cluster: Any, s3_bucket: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The SMGeo job from synth to test evaluation with every location on the S3 server: it writes nothing to
    local disk (its working directory keeps only the user's file), the user's objects next to its outputs
    survive, and its two Train workers run on the two worker nodes."""
    import hashlib

    from geomoe.core.summaries import train_report
    from geomoe.on_ray.jobs import run_job

    project = f"{s3_bucket}/project"
    synthesize = {"output_dir": f"{project}/synthgeo", "train_buildings": 1, "test_buildings": 1, "drone_views": 1,
                  "ground_views": 0, "localization_train": 8, "localization_val": 4, "localization_test": 4,
                  "tile_size": 64, "query_size": 32}  # fmt: skip
    out = f"{project}/runs"
    raw = {
        "name": "smgeo_s3",
        "output_root": out,
        "stages": ["synth", "prepare", "train"],
        "data": {"format": "cvogl", "root": f"{project}/synthgeo/cvogl", "synthesize": synthesize},
        "model": tiny_smgeo(),
        "train": {"batch_size": 2, "lr": 1e-3, "epochs": 1, "materialize_inputs": True},
        "resources": job_raw("", out, tmp_path)["resources"],
    }
    users = [f"{s3_bucket}/notes.txt", f"{project}/thesis.txt", f"{out}/old/a.txt"]
    for location in users:
        storage.write_text_atomic(location, f"the user's {location}")
    before = {loc: hashlib.sha256(storage.read_bytes(loc)).hexdigest() for loc in users}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.txt").write_text("the user's local file")
    workers = _train_workers()
    spec = parse_spec(JobSpec, raw, "test")
    results = run_job(spec)

    assert [p.name for p in tmp_path.iterdir()] == ["thesis.txt"]  # no model cache either: SMGeo builds from the spec
    assert {loc: hashlib.sha256(storage.read_bytes(loc)).hexdigest() for loc in users} == before
    model = results["train"]["model"]
    assert model["checkpoint"].startswith(f"{out}/smgeo_s3/ray_train/stage1/")
    assert storage.read_json(f"{out}/smgeo_s3/results.json") == json.loads(json.dumps(results))
    assert model["test"]["smgeo"]["count"] == 4
    assert results["prepare"]["location"] == f"{out}/smgeo_s3/prepared"
    assert results["prepare"]["table"].startswith(f"{out}/smgeo_s3/prepared/")
    assert results["prepare"]["rejected"]["count"] == 0
    report = train_report(spec, results["train"])  # what the CLI prints
    assert "object localization, test split, DetGeo protocol (%, [95% bootstrap interval]), 4 samples" in report
    for method in ("smgeo", "click_zeroed", "centre_box", "best epoch", "by size", "smgeo - click_zeroed"):
        assert method in report
    nodes = _nodes_of_new_workers(workers)
    assert len(nodes) == 2 and two_node_cluster.head_node.node_id not in nodes
