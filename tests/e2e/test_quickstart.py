"""The quickstart job end to end through the real CLI, in a fresh process with its own local Ray cluster."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geomoe.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_quickstart_job_runs_and_reports(tmp_path: Path) -> None:
    small = [
        "data.synthesize.train_buildings=6",
        "data.synthesize.test_buildings=3",
        "data.synthesize.localization_train=2",
        "train.stage1_epochs=2",  # the pipeline end to end, not the model's quality
    ]
    args = ["run", str(REPO / "jobs" / "quickstart.yaml"), *[a for s in small for a in ("--set", s)]]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
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
    assert "[4/5] train: model, no_refine, unified (4 epochs each)" in done.stderr and "12/12 epoch" in done.stderr
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
    again = run_cli(*args, cwd=tmp_path)  # finished outputs are reused, not redone
    assert again.returncode == 0 and json.loads((tmp_path / "runs/quickstart/results.json").read_text()) == results


def test_cli_reports_spec_errors_clearly(tmp_path: Path) -> None:
    done = run_cli(
        "run", str(REPO / "jobs" / "quickstart.yaml"), "--set", "preprocess.satellite_copies=-2", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "quickstart.yaml: preprocess.satellite_copies:" in done.stderr and "Traceback" not in done.stderr


def test_smgeo_quickstart_job_runs_and_reports(tmp_path: Path) -> None:
    small = [
        "data.synthesize.localization_train=8",
        "data.synthesize.localization_val=4",
        "data.synthesize.localization_test=4",
        "train.epochs=2",
        "train.batch_size=4",
    ]
    args = ["run", str(REPO / "jobs" / "smgeo_quickstart.yaml"), *[a for s in small for a in ("--set", s)]]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "object localization, test split, DetGeo protocol (%, [95% bootstrap interval]), 4 samples" in done.stdout
    for method in ("smgeo", "click_zeroed", "centre_box", "best epoch", "by size", "smgeo - click_zeroed"):
        assert method in done.stdout
    results = json.loads((tmp_path / "runs" / "smgeo_quickstart" / "results.json").read_text())
    assert results["prepare"]["rows"]["train"] and results["train"]["model"]["test"]["smgeo"]["count"] == 4
