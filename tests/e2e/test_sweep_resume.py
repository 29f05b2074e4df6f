"""A small SMGeo sweep through the real CLI on Ray Tune (Train inside Tune), with its data, prepared table and
experiment on the S3 server on 127.0.0.1, interrupted with Ctrl-C after its first trial finished and resumed from
a fresh folder on this machine (nothing local survives between the two): the finished trial is not rerun, a trial
whose job is invalid shows as failed with its error, and the final report has every row. The interruption comes
right after the first result is written: whatever Tune recorded, the finished trial is reported from its file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geomoe.core import storage

REPO = Path(__file__).resolve().parents[2]
SWEEP = f"""
name: tiny_sweep
base: {REPO / "jobs" / "smgeo_quickstart.yaml"}
output_root: ${{SWEEP_BUCKET}}/sweeps
overrides:
  - data.root=${{SWEEP_BUCKET}}/data/synthgeo-tiny/cvogl
  - data.synthesize.output_dir=${{SWEEP_BUCKET}}/data/synthgeo-tiny
  - data.synthesize.localization_train=8
  - data.synthesize.localization_val=4
  - data.synthesize.localization_test=4
  - preprocess.output_dir=${{SWEEP_BUCKET}}/tiny-prepared
  - train.epochs=1
  - train.batch_size=4
variants:
  two: [model.gmoe.experts=2]
  bad: [model.gmoe.top_k=5]          # more than the 3 experts: the trial's job is invalid
  four: [model.gmoe.experts=4]
metric: val_acc50
report_metrics: [val_acc25, val_acc50, val_miou]
max_concurrent: 1
paper:
  source: a made-up row, for the table
  rows: [{{label: "two", params: {{variant: two}}, metrics: {{val_acc50: 50.0}}}}]
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "geomoe.cli", *args]


def results(trials: str) -> dict[str, dict]:
    found = [rel for rel, _ in storage.list_files(trials) if rel.endswith("/trial_result.json") and rel.count("/") == 1]
    return {rel.split("/")[0]: storage.read_json(f"{trials}/{rel}") for rel in found}


def test_a_sweep_interrupted_after_its_first_trial_resumes_without_rerunning_it(
    tmp_path: Path, s3_bucket: str, mlflow_server: str
) -> None:
    first_machine, second_machine = tmp_path / "first", tmp_path / "second"
    for folder in (first_machine, second_machine):
        folder.mkdir()
        (folder / "tiny_sweep.yaml").write_text(SWEEP)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "SWEEP_BUCKET": s3_bucket, "MLFLOW_TRACKING_URI": mlflow_server}
    experiment = f"{s3_bucket}/sweeps/tiny_sweep"
    trials = f"{experiment}/trials"
    first = subprocess.Popen(cli("sweep", "tiny_sweep.yaml"), cwd=first_machine, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 400
    while not any(r["status"] == "finished" for r in results(trials).values()):
        assert first.poll() is None, (first.stdout.read() if first.stdout else "")[-3000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.2)
    # Ctrl-C right after a trial wrote its result: the timing at which Tune can still count it as unfinished
    first.send_signal(signal.SIGINT)
    interrupted, _ = first.communicate(timeout=180)
    assert len(interrupted.splitlines()) <= 150, interrupted[-3000:]  # as quiet as a job (stdout and stderr)
    assert list(first_machine.iterdir()) == [first_machine / "tiny_sweep.yaml"]  # everything went to the bucket
    # a finished trial's files (its result and every Ray Train file): a rerun would add or rewrite some
    done = {
        k: (v, storage.list_files(f"{trials}/{k}")) for k, v in results(trials).items() if v["status"] == "finished"
    }
    assert len(done) >= 1
    again = subprocess.run(cli("sweep", "tiny_sweep.yaml"), cwd=second_machine, env=env, text=True,
                           capture_output=True)  # fmt: skip
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = subprocess.run(cli("sweep", "tiny_sweep.yaml", "--resume"), cwd=second_machine, env=env, text=True,
                             capture_output=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    printed = resumed.stdout + resumed.stderr
    assert len(printed.splitlines()) <= 150, printed[-3000:]  # one header, a line per trial, the report, the time
    assert resumed.stderr.startswith("sweep tiny_sweep: 3 trials, at most 1 at once, ranked by val_acc50 (max)")
    assert "failed: SpecError" in resumed.stderr and "sweep took" in resumed.stdout
    assert storage.is_file(f"{experiment}/logs/geomoe.log")  # the details went to the sweep's logs
    for key, (outcome, files) in done.items():  # finished before the interruption: not rerun
        assert storage.list_files(f"{trials}/{key}") == files and results(trials)[key] == outcome
    final = results(trials)
    assert sorted(r["params"]["variant"] for r in final.values()) == ["bad", "four", "two"]
    bad = next(r for r in final.values() if r["params"]["variant"] == "bad")
    assert bad["status"] == "failed" and "top_k 5 exceeds the 3 experts" in bad["error"]
    rows = [line for line in resumed.stdout.splitlines() if line.startswith("| ours")]
    assert len(rows) == 3 and sum(r.endswith("finished |") for r in rows) == 2
    assert any("failed: SpecError" in r and "top_k 5 exceeds" in r for r in rows)
    assert "| paper: two |" in resumed.stdout and "trials: {'finished': 2, 'failed': 1, 'not run': 0}" in resumed.stdout
    assert storage.is_file(f"{experiment}/report.csv") and storage.is_file(f"{experiment}/plot-variant.png")
    reported = subprocess.run(cli("report", experiment), cwd=tmp_path, env=env, text=True, capture_output=True)
    assert reported.returncode == 0 and reported.stdout.strip() in resumed.stdout  # the same report, from disk
    check_tracked_sweep(mlflow_server, final)


def check_tracked_sweep(server: str, final: dict[str, dict]) -> None:
    """One parent run for the sweep, continued after the interruption; a child run per trial with its reported
    metric (Tune's MLflow callback); the best finished trial's checkpoint registered with alias ``best``,
    referenced where it lives (the bucket), not copied."""
    from mlflow import MlflowClient

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tiny_sweep")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'tiny_sweep'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sum("val_acc50" in run.data.metrics for run in children) >= 2  # the two trials that trained
    finished = [r for r in final.values() if r["status"] == "finished"]
    best = max(finished, key=lambda r: r["metrics"]["val_acc50"])
    version = client.get_model_version_by_alias("tiny_sweep", "best")
    assert version.source == best["checkpoint"] and version.source.startswith("s3://")
    assert float(version.tags["metric.val_acc50"]) == pytest.approx(best["metrics"]["val_acc50"], rel=1e-5)
