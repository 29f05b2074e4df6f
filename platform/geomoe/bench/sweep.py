"""``geomoe bench sweep``: a 4-trial SMGeo quickstart sweep (experts 2..5) with its trials packed (up to 4 at
once) against the same sweep one trial at a time, and how busy the CPUs were in each.

Each way runs in a fresh process with its own local Ray cluster, on the same prepared data (made once before
either is timed), into its own experiment folder. CPU busy = 1 - idle share of all cores over the run, from
/proc/stat through psutil. Wall times on a shared machine move; the ratio is the result.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from geomoe.config import load_job

REPO_JOBS = Path(__file__).resolve().parents[3] / "jobs"
OVERRIDES = [
    "data.root=data/synthgeo-bench/cvogl",
    "data.synthesize.localization_train=96",
    "data.synthesize.localization_val=32",
    "data.synthesize.localization_test=32",
    "preprocess.output_dir=runs/bench-prepared",
    "train.epochs=2",
    "resources.num_cpus=8",
]


def _sweep_file(folder: Path, concurrent: int) -> Path:
    path = folder / f"bench_sweep_{concurrent}.yaml"
    spec = {
        "name": f"bench_sweep_{concurrent}",
        "base": str(REPO_JOBS / "smgeo_quickstart.yaml"),
        "overrides": OVERRIDES,
        "params": {"model.gmoe.experts": {"grid": [2, 3, 4, 5]}},
        "metric": "val_acc50",
        "report_metrics": ["val_acc50"],
        "max_concurrent": concurrent,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, fraction of CPU time busy across all cores) of running ``cmd``."""
    before, started = psutil.cpu_times(), time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    wall, after = time.perf_counter() - started, psutil.cpu_times()
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return wall, 1.0 - idle / total if total > 0 else 0.0


def bench_sweep() -> dict[str, Any]:
    from geomoe.jobs import run_job

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = load_job(REPO_JOBS / "smgeo_quickstart.yaml", OVERRIDES).with_absolute_paths(folder)
        run_job(base.model_copy(update={"stages": ["synth", "prepare"], "output_root": str(folder / "runs")}))
        runs = {}
        for concurrent in (1, 4):
            cmd = [sys.executable, "-m", "geomoe.cli", "sweep", str(_sweep_file(folder, concurrent))]
            runs[concurrent] = _timed(cmd, folder)
    (seq_s, seq_busy), (packed_s, packed_busy) = runs[1], runs[4]
    return {
        "benchmark": "sweep",
        "trials": 4,
        "cores": psutil.cpu_count(),
        "sequential_s": round(seq_s, 1),
        "packed_s": round(packed_s, 1),
        "sequential_cpu_busy": round(seq_busy, 3),
        "packed_cpu_busy": round(packed_busy, 3),
        "speedup": round(seq_s / packed_s, 2),
        "summary": (
            f"sweep of 4 SMGeo quickstart trials: one at a time {seq_s:.0f} s (CPUs {100 * seq_busy:.0f}% busy), "
            f"packed up to 4 at once {packed_s:.0f} s (CPUs {100 * packed_busy:.0f}% busy): {seq_s / packed_s:.2f}x"
        ),
    }
