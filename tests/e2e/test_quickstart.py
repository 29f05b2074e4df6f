"""The quickstart job end to end through the real CLI, in a fresh process with its own local Ray cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geomoe.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def test_quickstart_job_runs_and_reports(tmp_path: Path, mlflow_server: str) -> None:
    small = [
        "data.synthesize.train_buildings=6",
        "data.synthesize.test_buildings=3",
        "data.synthesize.localization_train=2",
        "train.stage1_epochs=1",  # the pipeline end to end; that it learns: tests/ray/test_learning.py
        "train.stage2_epochs=1",
    ]
    args = ["run", str(REPO / "jobs" / "quickstart.yaml"), *[a for s in small for a in ("--set", s)]]
    tracked = os.environ | {"MLFLOW_TRACKING_URI": mlflow_server}
    command = [sys.executable, "-m", "geomoe.cli", *args]
    with subprocess.Popen(
        command, cwd=tmp_path, env=tracked, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as first:
        refused = second_run_while_the_first_holds_the_folder(args, tmp_path, first)
        out, err = first.communicate(timeout=600)
    done = subprocess.CompletedProcess(command, first.returncode, out, err)
    assert done.returncode == 0, done.stderr[-3000:]
    assert refused.returncode == 2 and f"pid {first.pid}," in refused.stderr, refused.stderr
    assert not (tmp_path / "runs" / "quickstart" / "run.lock").exists()  # released at the end
    assert "prepared" in done.stdout and "rejected records: 0" in done.stdout
    assert "text -> image retrieval, exact protocol" in done.stdout and "unified stage2" in done.stdout
    assert "model stage2 +CGRS-scene" in done.stdout  # re-ranked with the scene-graph caption store
    assert "model stage2 +CGRS-tinyVLM" in done.stdout  # and with the tiny VLM's captions, written by 'caption'
    assert "sample query:" in done.stdout
    assert "serving index:" in done.stdout and "faiss hnsw: recall@10_vs_exact" in done.stdout
    # quiet by default: a header and a bar per stage on stderr, the tables then the time table last on stdout,
    # Ray's and the workers' logs in the run folder (the demo printed 1,667 lines before)
    screen = done.stdout + done.stderr
    assert screen.count("\n") <= 150, screen
    assert "[4/5] train: model, no_refine, unified (2 epochs each)" in done.stderr
    assert "done: 6 epochs in" in done.stderr
    assert "Running Dataset" not in screen and "RayTrainWorker" not in screen
    # the raylet's warnings about worker processes reach stdout whatever the driver sets (Ray prints them)
    printed = [line for line in done.stdout.splitlines() if "(raylet)" not in line]
    assert printed[-1].startswith("  total") and "time per stage (s):" in printed[-10:]
    logs = tmp_path / "runs" / "quickstart" / "logs"
    assert "stage train took" in (logs / "geomoe.log").read_text()
    assert any(path.name.startswith("worker-") for path in (logs / "ray").iterdir())
    results = json.loads((tmp_path / "runs" / "quickstart" / "results.json").read_text())
    synth, manifest = results["synth"], results["prepare"]
    expected = synth["geotext"]["train"]["pairs"] + synth["geotext"]["test"]["pairs"] + manifest["augmented_rows"]
    assert manifest["total"] == expected
    assert (tmp_path / "runs" / "quickstart" / "index" / "manifest.json").is_file()  # what serve/quickstart.yaml serves
    captioned = results["caption"]
    assert captioned["images"] == sum(synth["geotext"]["test"]["images"].values())
    assert captioned["captioned"] + sum(captioned["failed_by_reason"].values()) == captioned["images"]
    check_tracked_run(mlflow_server, results, done.stdout)
    again = run_cli(*args, cwd=tmp_path)  # finished outputs are reused, not redone
    assert again.returncode == 0 and json.loads((tmp_path / "runs/quickstart/results.json").read_text()) == results
    fresh = tmp_path / "fresh"  # the same job from nothing, in another folder: the same numbers to the last digit
    fresh.mkdir()
    rerun = run_cli(*args, cwd=fresh, env=tracked)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert trained(fresh) == trained(tmp_path)  # point estimates, intervals and every query's rank, 3 models
    assert tables_of(rerun.stdout) == tables_of(done.stdout)  # and the printed tables


def trained(folder: Path) -> str:
    """The train stage's results as canonical JSON, without what names the folder or the time (checkpoint paths)."""
    results = json.loads((folder / "runs" / "quickstart" / "results.json").read_text())["train"]

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "checkpoint"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return json.dumps(strip(results), sort_keys=True)


def tables_of(stdout: str) -> str:
    """The printed retrieval tables (from the first table's header to the sample query)."""
    start = stdout.index("text -> image retrieval")
    return stdout[start : stdout.index("sample query:", start)]


def second_run_while_the_first_holds_the_folder(
    args: list[str], cwd: Path, first: subprocess.Popen[str]
) -> subprocess.CompletedProcess[str]:
    """The same job with the same output started again once the first run holds its folder: refused."""
    import time

    lock = cwd / "runs" / "quickstart" / "run.lock"
    while not lock.exists() and first.poll() is None:
        time.sleep(0.2)
    return run_cli(*args, cwd=cwd)


def check_tracked_run(server: str, results: dict, printed: str) -> None:
    """The job's MLflow run: its spec, its final metrics as in results.json, a child run per model and stage
    with one value per epoch (logged by the Train loop's rank 0), and the model registered from it."""
    from mlflow import MlflowClient

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("quickstart")
    (job,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'quickstart'")
    assert job.info.status == "FINISHED" and job.data.params["train.stage1_epochs"] == "1"
    final = results["train"]["model"]["stage2"]["retrieval"]["exact"]["t2i"]
    assert job.data.metrics["model.R_at_10"] == final["R@10"] and "time.train" in job.data.metrics
    # every evaluated stage, protocol and re-ranking, not only the final numbers a sweep ranks by
    model = results["train"]["model"]
    assert job.data.metrics["model.stage1.R_at_1"] == model["stage1"]["retrieval"]["exact"]["t2i"]["R@1"]
    assert job.data.metrics["model.stage2.building.R_at_10"] == model["stage2"]["retrieval"]["building"]["t2i"]["R@10"]
    for method, reranked in model["stage2"]["reranked"].items():
        assert job.data.metrics[f"model.stage2.reranked.{method}.R_at_1"] == reranked["exact"]["t2i"]["R@1"]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{job.info.run_id}'")
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == {f"{m} stage{s}" for m in ("model", "no_refine", "unified") for s in (1, 2)}
    history = client.get_metric_history(by_name["model stage1"].info.run_id, "loss")
    assert [m.step for m in history] == [0]  # one stage-1 epoch
    (version,) = client.search_model_versions("name = 'quickstart'")
    assert version.run_id == job.info.run_id and version.tags["metric.R_at_10"] == f"{final['R@10']:.6g}"
    assert f"registered: models:/quickstart/{version.version}" in printed


def test_cli_reports_spec_errors_clearly(tmp_path: Path) -> None:
    done = run_cli(
        "run", str(REPO / "jobs" / "quickstart.yaml"), "--set", "preprocess.satellite_copies=-2", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "quickstart.yaml: preprocess.satellite_copies:" in done.stderr and "Traceback" not in done.stderr
