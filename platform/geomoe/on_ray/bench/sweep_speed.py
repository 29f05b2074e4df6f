"""``geomoe bench sweep``: a 4-trial SMGeo quickstart sweep (experts 2..5) with its trials packed (2 and 4 at
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

from geomoe.core.config import load_job
from geomoe.on_ray.bench import cpu_busy

REPO_JOBS = Path(__file__).resolve().parents[3] / "jobs"
OVERRIDES = [
    "data.root=data/synthgeo-bench/cvogl",
    "data.synthesize.output_dir=data/synthgeo-bench",
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
    wall = time.perf_counter() - started
    return wall, cpu_busy(before, psutil.cpu_times())


def bench_sweep() -> dict[str, Any]:
    from geomoe.on_ray.jobs import run_job

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = load_job(REPO_JOBS / "smgeo_quickstart.yaml", OVERRIDES).with_absolute_paths(folder)
        run_job(base.model_copy(update={"stages": ["synth", "prepare"], "output_root": str(folder / "runs")}))
        import ray

        ray.shutdown()  # the sweeps start their own clusters; this one would only hold memory
        runs = {}
        for concurrent in (1, 2, 4):
            cmd = [sys.executable, "-m", "geomoe.cli", "sweep", str(_sweep_file(folder, concurrent))]
            runs[concurrent] = _timed(cmd, folder)
    seq_s = runs[1][0]
    ways = {f"{c}_at_once": {"wall_s": round(w, 1), "cpu_busy": round(b, 3), "speedup": round(seq_s / w, 2)}
            for c, (w, b) in runs.items()}  # fmt: skip
    described = ", ".join(f"{c} at once {w:.0f} s ({100 * b:.0f}% CPU busy)" for c, (w, b) in runs.items())
    best = min(runs, key=lambda c: runs[c][0])
    return {
        "benchmark": "sweep",
        "trials": 4,
        "cores": psutil.cpu_count(),
        "ways": ways,
        "speedup": round(seq_s / runs[best][0], 2),
        "summary": f"sweep of 4 SMGeo quickstart trials: {described}; best {best} at once, "
        f"{seq_s / runs[best][0]:.2f}x over one at a time",
    }
