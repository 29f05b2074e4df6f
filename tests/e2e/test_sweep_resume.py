"""A small SMGeo sweep through the real CLI on Ray Tune (Train inside Tune), interrupted with Ctrl-C after its
first trial finished and resumed: the finished trial is not rerun, a trial whose job is invalid shows as failed
with its error, and the final report has every row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = f"""
name: tiny_sweep
base: {REPO / "jobs" / "smgeo_quickstart.yaml"}
overrides:
  - data.root=data/synthgeo-tiny/cvogl
  - data.synthesize.localization_train=8
  - data.synthesize.localization_val=4
  - data.synthesize.localization_test=4
  - preprocess.output_dir=runs/tiny-prepared
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


def results(trials: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in trials.glob("*/trial_result.json")}


def test_a_sweep_interrupted_after_its_first_trial_resumes_without_rerunning_it(tmp_path: Path) -> None:
    (tmp_path / "tiny_sweep.yaml").write_text(SWEEP)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    trials = tmp_path / "runs" / "sweeps" / "tiny_sweep" / "trials"
    first = subprocess.Popen(cli("sweep", "tiny_sweep.yaml"), cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 400
    while not any(r["status"] == "finished" for r in results(trials).values()):
        assert first.poll() is None, (first.stdout.read() if first.stdout else "")[-3000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(2)
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops
    first.communicate(timeout=180)
    done = {k: (v, (trials / k / "trial_result.json").stat().st_mtime_ns) for k, v in results(trials).items()
            if v["status"] == "finished"}  # fmt: skip
    assert len(done) >= 1
    again = subprocess.run(cli("sweep", "tiny_sweep.yaml"), cwd=tmp_path, env=env, text=True, capture_output=True)
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = subprocess.run(cli("sweep", "tiny_sweep.yaml", "--resume"), cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key, (outcome, mtime) in done.items():  # finished before the interruption: not rerun
        assert (trials / key / "trial_result.json").stat().st_mtime_ns == mtime and results(trials)[key] == outcome
    final = results(trials)
    assert sorted(r["params"]["variant"] for r in final.values()) == ["bad", "four", "two"]
    bad = next(r for r in final.values() if r["params"]["variant"] == "bad")
    assert bad["status"] == "failed" and "top_k 5 exceeds the 3 experts" in bad["error"]
    rows = [line for line in resumed.stdout.splitlines() if line.startswith("| ours")]
    assert len(rows) == 3 and sum(r.endswith("finished |") for r in rows) == 2
    assert any("failed: SpecError" in r and "top_k 5 exceeds" in r for r in rows)
    assert "| paper: two |" in resumed.stdout and "trials: {'finished': 2, 'failed': 1, 'not run': 0}" in resumed.stdout
    experiment = tmp_path / "runs" / "sweeps" / "tiny_sweep"
    assert (experiment / "report.csv").is_file() and (experiment / "plot-variant.png").is_file()
    reported = subprocess.run(cli("report", str(experiment)), cwd=tmp_path, env=env, text=True, capture_output=True)
    assert reported.returncode == 0 and reported.stdout.strip() in resumed.stdout  # the same report, from disk
