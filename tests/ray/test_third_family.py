"""A third model family, defined only under tests/ (tests/toy_family.py), runs as a job and as a two-trial sweep
through the registry, with nothing under platform/ changed for it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from checks import assert_share_interval
from geomoe.core import registry
from geomoe.core.config import JobSpec, load_yaml, parse_spec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import SpecError
from geomoe.core.stages import listed_stages
from geomoe.on_ray.jobs import run_job, run_job_timed
from tiny_jobs import TOY, toy_job

REPO = Path(__file__).resolve().parents[2]
TOY_MARGIN = 10.0  # points of test accuracy above always answering the most common platform


@pytest.fixture(scope="module")
def toy_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthgeo of 24 training buildings (96 images): on the session's 4 (16 images) the toy's test accuracy
    moved between 25 and 75% from one epoch to the next and ended at the majority class's 50%."""
    from geomoe.core.config import SynthSpec
    from geomoe.core.data.synthgeo import generate

    root = tmp_path_factory.mktemp("toy") / "synthgeo"
    sizes = {"localization_train": 1, "localization_val": 1, "localization_test": 1, "tile_size": 64, "query_size": 32}
    generate(
        root, SynthSpec(train_buildings=24, test_buildings=6, drone_views=2, ground_views=1, image_size=32, **sizes)
    )
    return root


def test_family_errors_name_the_key(tiny_synth: tuple[Path, dict]) -> None:
    raw = toy_job(tiny_synth[0], Path("/x"))
    with pytest.raises(SpecError, match=r"toy\.yaml: model\.name: unknown model family 'toy_plat'; registered: "):
        parse_spec(JobSpec, raw | {"model": {"name": "toy_plat"}}, "toy.yaml")
    with pytest.raises(SpecError, match=r"families: cannot import '/x/nowhere\.py'"):
        parse_spec(JobSpec, raw | {"families": ["/x/nowhere.py"]}, "toy.yaml")
    with pytest.raises(SpecError, match=r"toy\.yaml: families: Input should be a valid list"):
        parse_spec(JobSpec, raw | {"families": TOY}, "toy.yaml")
    with pytest.raises(SpecError, match=r"stages: stage 'platform_shares' needs a 'prepare' stage before it"):
        parse_spec(JobSpec, raw | {"stages": ["platform_shares", "prepare"], "shares": {}}, "toy.yaml")  # its own check
    with pytest.raises(SpecError, match=r"train\.stage1_epochs: unknown key"):
        parse_spec(JobSpec, raw | {"train": {"stage1_epochs": 2}}, "toy.yaml")  # PE-MoE's, not the toy's
    # a family's own top-level sections belong to its jobs only, and their errors name the key
    with pytest.raises(SpecError, match=r"toy\.yaml: index: a section of pe_moe jobs, not of toy_platform jobs"):
        parse_spec(JobSpec, raw | {"index": {"output_dir": "/x/index"}}, "toy.yaml")  # PE-MoE's section
    with pytest.raises(SpecError, match=r"toy\.yaml: shares\.split: Input should be 'train' or 'test'"):
        parse_spec(JobSpec, raw | {"shares": {"split": "val"}}, "toy.yaml")
    with pytest.raises(SpecError, match=r"stages: stage 'platform_shares' needs a shares section"):
        parse_spec(JobSpec, raw | {"stages": ["prepare", "platform_shares"]}, "toy.yaml")
    pe_moe = load_yaml(REPO / "jobs" / "quickstart.yaml") | {"shares": {}}
    with pytest.raises(SpecError, match=r"shares: a section of toy_platform jobs, not of pe_moe jobs"):
        parse_spec(JobSpec, pe_moe, "quickstart.yaml")  # the toy's section in another family's job


def test_the_toy_family_runs_as_a_job(toy_synth: Path, tmp_path: Path) -> None:
    from toy_family import accuracy, thumbnails

    raw = toy_job(toy_synth, tmp_path) | {"baselines": {"still": ["train.lr=1e-12"]}}  # lr 0, as near as allowed
    raw["resources"]["concurrent_models"] = True  # the model and its baseline, each in its own Ray task
    raw["stages"] = ["prepare", "platform_shares", "train"]  # with a stage of the family's own
    raw["shares"] = {}  # and the section of its own that the stage reads: its output_dir goes to the run folder
    spec = parse_spec(JobSpec, raw, "toy.yaml")
    shares_dir = tmp_path / "runs" / "toy" / "shares"
    assert ("shares.output_dir", str(shares_dir), "platform_shares") in spec.outputs()  # the ownership rule's
    assert spec.locations()["shares.output_dir"] == str(shares_dir)  # what a cluster must share
    assert type(spec.model).__name__ == "ToyModelSpec" and type(spec.train).__name__ == "ToyTrainSpec"
    timed = run_job_timed(spec)
    results = timed.outputs
    shares = results["platform_shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) > 0
    assert json.loads((shares_dir / "shares.json").read_text()) == shares
    summaries = {stage.name: stage.summary(spec, results[stage.name]) for stage in listed_stages(spec)}  # the CLI's
    assert list(summaries) == ["prepare", "train", "platform_shares"]  # the common stages', then the family's
    assert str(summaries["platform_shares"]).startswith("platform shares: satellite ")
    model = results["train"]["model"]
    still = results["train"]["still"]
    assert still["checkpoint"].startswith(str(tmp_path / "runs" / "toy" / "baselines" / "still" / "ray_train"))
    assert family_lr(still["checkpoint"]) == 1e-12 and family_lr(model["checkpoint"]) == 0.01
    assert {"train model", "train still"} <= set(timed.seconds)
    # it learns: the trained model beats always answering the test split's most common platform, the one at lr 0
    # does not
    labels = thumbnails(PreparedDataset.open(str(tmp_path / "prepared")), "test", 8)["y"]  # the evaluated images
    majority = 100 * np.bincount(labels).max() / len(labels)
    assert model["test"]["accuracy"] > majority + TOY_MARGIN
    assert still["test"]["accuracy"] <= majority + TOY_MARGIN
    family = registry.family("toy_platform")
    # the engine ran three epochs, kept each, and the result points at the best validation epoch
    kept = yaml.safe_load((tmp_path / "runs" / "toy" / "stage1.json").read_text())["kept"]
    assert sorted(k["epoch"] for k in kept) == [0, 1, 2]
    assert model["validation"]["val_accuracy"] == max(k["val_accuracy"] for k in kept)
    # the family's test evaluation, recomputed from the checkpoint read back through the registry
    loaded = family.load_checkpoint(model["checkpoint"])
    test = thumbnails(
        PreparedDataset.open(str(tmp_path / "prepared")), "test", loaded.spec.model_as(family.model_spec).thumb
    )
    assert model["test"]["accuracy"] == pytest.approx(accuracy(loaded.model, test["x"], test["y"]))
    assert model["test"]["count"] == len(test["y"]) == len(np.unique(test["x"], axis=0))
    assert loaded.payload["epoch"] == model["best_epoch"]
    assert "toy_platform toy" in family.report(spec, results["train"])  # the CLI's table, from the base class


def family_lr(checkpoint: str) -> float:
    """The learning rate of the spec a checkpoint was trained with."""
    return float(registry.family("toy_platform").load_checkpoint(checkpoint).spec.train.lr)


def test_the_toy_family_runs_as_a_two_trial_sweep(
    toy_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geomoe.core.sweep.tables import report_rows, write_report
    from geomoe.on_ray.tune import run_sweep

    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy_job(toy_synth, tmp_path)))
    sweep = {
        "name": "toy_lr",
        "base": "toy.yaml",
        "output_root": str(tmp_path / "sweeps"),
        "params": {"train.lr": {"grid": [1e-12, 0.01]}},  # lr 0 (as near as allowed) against one that learns
        "metric": "test_accuracy",
        "report_metrics": ["test_accuracy", "val_accuracy", "params_M"],
        "max_concurrent": 2,  # both at once: 2 x (0.5 CPU trial + 0.5 CPU worker) on the 4-CPU test cluster
        "paper": {"source": "made-up rows, for the verdict column",
                  "rows": [{"label": "still", "params": {"train.lr": 1e-12}, "metrics": {"test_accuracy": 25.0}},
                           {"label": "trained", "params": {"train.lr": 0.01}, "metrics": {"test_accuracy": 75.0}}]},
    }  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # an empty working folder of its own: no mlruns/ may appear in it
    experiment = run_sweep(tmp_path / "sweep.yaml")
    # tracked in an embedded store beside the experiment; Tune's MLflow callback set MLflow's process-wide URI,
    # which the sweep puts back (a later job in this process once logged into the sweep's store)
    assert os.environ.get("MLFLOW_TRACKING_URI") == tracking_uri and (tmp_path / "sweeps" / "mlflow.db").is_file()
    assert not any(path.name == "mlruns" for path in tmp_path.rglob("mlruns"))
    _, rows = report_rows(experiment)
    assert sorted(r["params"]["train.lr"] for r in rows) == [1e-12, 0.01]
    for row in rows:
        assert row["status"] == "finished", row
        assert row["metrics"]["params_M"] == pytest.approx((3 * 8 * 8 * 3 + 3) / 1e6)  # Linear(192, 3)
        assert row["metrics"]["test_count"] > 0
        # each trial's interval, from its per-image values kept beside the result
        assert_share_interval(
            row["metrics"]["test_accuracy"], row["intervals"]["test_accuracy"], len(row["values"]["test_accuracy"])
        )
        assert row["values"]["test_accuracy"].mean() == pytest.approx(row["metrics"]["test_accuracy"])
    text = write_report(experiment)
    verdict = next(line for line in text.splitlines() if line.startswith("| trained | still | test_accuracy |"))
    assert verdict.split("|")[-2].strip() == "reproduced"  # training beats lr 0 on the same images, as the rows say


def test_a_job_with_seeds_trains_once_per_seed_and_reports_the_spread(
    tiny_synth: tuple[Path, dict], tmp_path: Path
) -> None:
    from geomoe.core.job_results import BY_SEED
    from geomoe.core.summaries import train_report

    raw = toy_job(tiny_synth[0], tmp_path) | {"seeds": [3, 4]}
    raw["train"] |= {"epochs": 1, "keep_checkpoints": 1}
    spec = parse_spec(JobSpec, raw, "toy.yaml")
    train = run_job(spec)["train"]
    assert list(train[BY_SEED]) == ["3", "4"] and train["model"] == train[BY_SEED]["3"]["model"]
    for seed, results in train[BY_SEED].items():
        assert f"/runs/toy/seed-{seed}/" in results["model"]["checkpoint"]
        loaded = registry.family("toy_platform").load_checkpoint(results["model"]["checkpoint"])
        assert loaded.spec.seed == int(seed) and loaded.spec.seeds == []
    family = registry.family("toy_platform")
    starts = {}
    for seed in train[BY_SEED]:
        torch.manual_seed(int(seed))  # as train_worker seeds rank 0
        starts[seed] = family.build_model(spec.model).weight.detach()
    for seed, results in train[BY_SEED].items():  # each seed trained from its own initialisation, and moved
        trained = family.load_checkpoint(results["model"]["checkpoint"]).model.weight.detach()
        distance = {s: float((trained - start).norm()) for s, start in starts.items()}
        assert 0 < distance[seed] < min(d for s, d in distance.items() if s != seed), (seed, distance)
    text = train_report(spec, train)
    spread = text[text.index("over seeds ['3', '4']") :]  # after the first seed's table
    line = next(x for x in spread.splitlines() if x.startswith("  model test_accuracy: "))
    assert " ± " in line and line.count("[") == 1  # mean ± std [pooled interval]
    with pytest.raises(SpecError, match=r"seeds: .* repeats a seed"):
        parse_spec(JobSpec, raw | {"seeds": [1, 1]}, "toy.yaml")
