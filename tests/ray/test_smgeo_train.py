"""SMGeo on Ray: prepare CVOGL-layout data, one TorchTrainer fit that keeps the best epoch by validation
acc@0.5, the test evaluation against both baselines, and a rerun that reuses the recorded run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from checks import assert_share_interval
from geomoe.families.smgeo.model import load_smgeo
from geomoe.families.smgeo.spec import SMGeoModelSpec
from geomoe.on_ray.jobs import run_job
from tiny_jobs import smgeo_job


def test_smgeo_job_trains_keeps_the_best_epoch_and_evaluates(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    """Prepared, then trained and evaluated with the source images gone: from the prepared image table alone."""
    root, counts = tiny_synth
    shutil.copytree(root / "cvogl", tmp_path / "synth" / "cvogl")
    spec = smgeo_job(tmp_path / "synth", tmp_path)
    prepared = run_job(spec.model_copy(update={"stages": ["prepare"]}))["prepare"]
    assert prepared["kind"] == "localization" and prepared["rejected"]["count"] == 0
    shutil.rmtree(tmp_path / "synth")
    spec = spec.model_copy(update={"stages": ["train"]})
    results = run_job(spec)
    model = results["train"]["model"]
    record = json.loads((tmp_path / "runs" / "smgeo_t" / "stage1.json").read_text())
    kept = record["kept"]
    assert sorted(k["epoch"] for k in kept) == [0, 1, 2]  # every epoch kept here, so "best" is checkable
    assert model["validation"]["val_acc50"] == max(k["val_acc50"] for k in kept)
    best = next(k for k in kept if k["checkpoint"] == model["checkpoint"])
    assert best["epoch"] == model["best_epoch"]
    _, trained_spec, payload = load_smgeo(model["checkpoint"])
    assert payload["epoch"] == model["best_epoch"] and trained_spec.model_as(SMGeoModelSpec) == spec.model_as(
        SMGeoModelSpec
    )
    test = model["test"]
    for method in ("smgeo", "click_zeroed", "centre_box"):
        assert test[method]["count"] == counts["cvogl"]["test"]
        assert set(test[method]["overall"]) == {"acc@0.25", "acc@0.5", "mIoU"}
        overall, n = test[method]["overall"], test[method]["count"]
        for share in ("acc@0.25", "acc@0.5"):  # their values on hand-made boxes: tests/unit/test_smgeo.py
            assert_share_interval(overall[share], test[method]["interval"][share], n)
    # the kept checkpoint on the validation split, by the test path, gives the numbers validation reported: the
    # per-sample values behind the val_* intervals of a sweep
    from geomoe.core import registry

    values = registry.family("smgeo").query_values(model)
    assert len(values["val_acc50"]) == counts["cvogl"]["val"] and len(values["test_acc@0.5"]) == counts["cvogl"]["test"]
    for name in ("val_acc25", "val_acc50", "val_miou"):
        assert values[name].mean() == pytest.approx(model["validation"][name], abs=1e-6)
    assert run_job(spec)["train"] == results["train"]  # the recorded run and evaluation are reused


def test_smgeo_fit_survives_a_killed_worker_and_resumes(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    from geomoe.core import registry
    from geomoe.core.data.prepared import PreparedDataset
    from geomoe.on_ray.pipelines.prepare import prepare
    from geomoe.on_ray.train.loop import LoopConfig
    from geomoe.on_ray.train.run import run_trainer

    root, _ = tiny_synth
    spec = smgeo_job(root, tmp_path)
    family = registry.family(spec.model.name)
    inputs = family.datasets(spec, PreparedDataset.of(prepare(spec)))
    hooks = {"fail_once_at": {"at": [2, 0], "marker": str(tmp_path / "killed")}}
    loop = LoopConfig.of(spec.train, spec.seed, epochs=3, steps_per_epoch=1, **hooks)
    record = run_trainer(spec, str(tmp_path / "run"), loop, inputs.datasets, best_by=family.best_by)
    assert (tmp_path / "killed").exists()  # the worker really died once, in epoch 2
    # the restarted worker group resumed from a checkpoint (the latest one registered), not from scratch
    assert record.metrics["epoch"] == 2 and record.metrics["start_epoch"] >= 1
