"""SMGeo on Ray: prepare CVOGL-layout data, one TorchTrainer fit that keeps the best epoch by validation
acc@0.5, the test evaluation against both baselines, and a rerun that reuses the recorded run."""

from __future__ import annotations

import json
from pathlib import Path

from geomoe.config import JobSpec, parse_spec
from geomoe.jobs import run_job
from geomoe.models.checkpoint import load_smgeo
from tiny_jobs import tiny_smgeo


def smgeo_job(root: Path, out: Path) -> JobSpec:
    raw = {
        "name": "smgeo_t",
        "output_root": str(out / "runs"),
        "stages": ["prepare", "train"],
        "data": {"format": "cvogl", "root": str(root / "cvogl")},
        "preprocess": {"output_dir": str(out / "prepared")},
        "model": tiny_smgeo(),
        "train": {"batch_size": 2, "lr": 1e-3, "epochs": 3, "keep_checkpoints": 3, "materialize_inputs": True},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "data_concurrency": 1},
    }
    return parse_spec(JobSpec, raw, "test")


def test_smgeo_job_trains_keeps_the_best_epoch_and_evaluates(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    spec = smgeo_job(root, tmp_path)
    results = run_job(spec)
    assert results["prepare"]["kind"] == "localization" and results["prepare"]["rejected"]["count"] == 0
    model = results["train"]["model"]
    record = json.loads((tmp_path / "runs" / "smgeo_t" / "stage1.json").read_text())
    kept = record["kept"]
    assert sorted(k["epoch"] for k in kept) == [0, 1, 2]  # every epoch kept here, so "best" is checkable
    assert model["validation"]["val_acc50"] == max(k["val_acc50"] for k in kept)
    best = next(k for k in kept if k["checkpoint"] == model["checkpoint"])
    assert best["epoch"] == model["best_epoch"]
    _, trained_spec, payload = load_smgeo(model["checkpoint"])
    assert payload["epoch"] == model["best_epoch"] and trained_spec.smgeo == spec.smgeo
    test = model["test"]
    for method in ("smgeo", "click_zeroed", "centre_box"):
        assert test[method]["count"] == counts["cvogl"]["test"]
        assert set(test[method]["overall"]) == {"acc@0.25", "acc@0.5", "mIoU"}
        assert 0 <= test[method]["overall"]["mIoU"] <= 100
    assert run_job(spec)["train"] == results["train"]  # the recorded run and evaluation are reused


def test_smgeo_fit_survives_a_killed_worker_and_resumes(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    from geomoe.pipelines.localize import pairs_dataset
    from geomoe.pipelines.prepare import prepare
    from geomoe.train.run import run_trainer
    from geomoe.train.smgeo_loop import VAL_METRIC, smgeo_train_loop
    from geomoe.train.smgeo_run import localization_rows

    root, _ = tiny_synth
    spec = smgeo_job(root, tmp_path)
    manifest = prepare(spec)
    m = spec.smgeo
    datasets = {
        s: pairs_dataset(localization_rows(manifest, s), m.query_size, m.reference_size, True) for s in ("train", "val")
    }
    hooks = {"fail_once_at": {"at": [2, 0], "marker": str(tmp_path / "killed")}}
    record = run_trainer(spec, tmp_path / "run", 1, smgeo_train_loop, datasets, 1, test_hooks=hooks, best_by=VAL_METRIC)
    assert (tmp_path / "killed").exists()  # the worker really died once, in epoch 2
    # the restarted worker group resumed from a checkpoint (the latest one registered), not from scratch
    assert record["metrics"]["epoch"] == 2 and record["metrics"]["start_epoch"] >= 1
