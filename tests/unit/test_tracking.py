"""Experiment tracking and the model registry against a real MLflow server on 127.0.0.1 (and the embedded SQLite
store without one): a job's run carries its spec, metrics and tables; a registered checkpoint comes back, by
version or alias, as the same files; a missing one is an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomoe.core import tracking
from geomoe.core.config import load_job
from geomoe.core.errors import ModelError

QUICKSTART = Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"


def checkpoint_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(bytes(range(256)) * 64)
    (folder / "extra.json").write_text('{"epoch": 3}')
    return folder


def test_a_job_run_and_its_registered_model_on_a_tracking_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv(tracking.ENV, mlflow_server)
    spec = load_job(QUICKSTART, [f"output_root={tmp_path / 'runs'}", "name=tracked_unit"])
    checkpoint = checkpoint_folder(tmp_path / "ckpt")
    with tracking.job_run(spec, str(tmp_path / "runs" / "tracked_unit")) as tracker:
        assert tracker is not None and tracker.uri == mlflow_server
        tracking.log_results(tracker, {"model.R@10": 40.18, "time.train": 337.4}, "the tables", {"train": {}})
        uri = tracking.register(tracker, "tracked_unit", str(checkpoint), {"R@10": 40.18})
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.batch_size"] == "32"
    assert run.data.metrics == {"model.R_at_10": 40.18, "time.train": 337.4}
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"spec.yaml", "tables.txt", "results.json", "checkpoint"} <= artifacts
    (version,) = client.search_model_versions("name = 'tracked_unit'")
    assert uri == f"models:/tracked_unit/{version.version}" and version.tags["metric.R_at_10"] == "40.18"
    assert version.run_id == tracker.run_id
    client.set_registered_model_alias("tracked_unit", "champion", version.version)
    for name in (uri, "models:/tracked_unit/latest", "models:/tracked_unit@champion"):  # the same files each way
        local = Path(tracking.checkpoint_location(name, cache=tmp_path / "cache"))
        assert sorted(p.name for p in local.iterdir()) == ["extra.json", "model.pt"]
        assert (local / "model.pt").read_bytes() == (checkpoint / "model.pt").read_bytes()
    with pytest.raises(ModelError, match=r"models:/tracked_unit/99: not in the model registry"):
        tracking.checkpoint_location("models:/tracked_unit/99", cache=tmp_path / "cache")
    with pytest.raises(RuntimeError), tracking.job_run(spec, "x") as failing:
        raise RuntimeError("stage failed")
    assert failing is not None and client.get_run(failing.run_id).info.status == "FAILED"


def test_without_a_server_runs_go_to_a_sqlite_store_under_the_output_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.delenv(tracking.ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # models:/ URIs then read the default output root's store, runs/mlflow.db
    with pytest.raises(ModelError, match=r"no model registry: MLFLOW_TRACKING_URI is not set and .*runs/mlflow.db"):
        tracking.checkpoint_location("models:/quickstart/1")
    root = tmp_path / "runs"
    spec = load_job(QUICKSTART, [f"output_root={root}"])
    with tracking.job_run(spec, str(root / "quickstart")) as tracker:
        assert tracker is not None and tracker.uri == f"sqlite:///{root / 'mlflow.db'}"
        uri = tracking.register(tracker, "quickstart", str(checkpoint_folder(tmp_path / "ckpt")), {})
    assert (root / "mlflow.db").is_file() and (root / "mlartifacts").is_dir()  # nothing outside the output root
    assert MlflowClient(tracker.uri).get_run(tracker.run_id).info.status == "FINISHED"
    assert (Path(tracking.checkpoint_location(uri, cache=tmp_path / "cache")) / "model.pt").is_file()
    bucket_spec = load_job(QUICKSTART, ["output_root=s3://bucket/runs"])
    with tracking.job_run(bucket_spec, "s3://bucket/runs/quickstart") as untracked:
        assert untracked is None  # a bucket holds no SQLite database: a server is needed (a warning says so)


def test_metric_names_are_ones_mlflow_accepts() -> None:
    assert tracking.metric_name("model.building_R@10") == "model.building_R_at_10"
    assert tracking.metric_name("a+b (c)") == "a_b _c_"


def test_registry_uris_pass_through_path_handling_untouched(tmp_path: Path) -> None:
    from geomoe.core import storage

    spec = load_job(QUICKSTART, ["index.checkpoint=models:/quickstart/3"]).with_absolute_paths(tmp_path)
    assert spec.index is not None and spec.index.checkpoint == "models:/quickstart/3"
    assert storage.absolute("models:/quickstart@best", tmp_path) == "models:/quickstart@best"
