"""``geomoe calibrate``: a sweep's mechanisms on their planted and null synthgeo worlds, through Ray Tune exactly
as ``geomoe sweep`` runs them, then the calibration table (geomoe.core.sweep.calibration)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomoe.core import ownership, storage
from geomoe.core.config import SweepSpec
from geomoe.core.errors import ExperimentError
from geomoe.core.sweep import calibration, experiment_location, grid_points, load_sweep, trial_key
from geomoe.on_ray.tune import run_loaded_sweep


def run_calibration(
    path: str | Path,
    quickstart: bool = False,
    resume: bool = False,
    overrides: Sequence[str] = (),
    quick: bool = False,
    only: Sequence[str] = (),
    quiet: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Run every world's sweep (``resume``: continue them), then write and return the calibration (its folder and
    result); ``quick``: one seed and one A/A seed per configuration; ``only``: these mechanisms (``selected``)."""
    started = time.perf_counter()
    sweep, base_path = load_sweep(path, quickstart, overrides)
    sweep = calibration.selected(sweep, only)
    root = Path.cwd().resolve()
    folder = calibration.location(sweep, root)
    ownership.claim_dir(folder, ownership.Claim("output_root", f"{sweep.name}-calibration", "calibrate"))
    seeds, aa = calibration.main_seeds(sweep, quick), calibration.aa_seeds(sweep, quick)
    runs = calibration.plan(sweep, base_path, quick)
    sweeps = calibration.world_sweeps(runs)
    saved = [_refuse_other_trials(s, root) for s in sweeps]  # all before any trains: a refusal costs nothing
    for world_sweep, before in zip(sweeps, saved, strict=True):
        run_loaded_sweep(world_sweep, base_path, resume=resume and before, quiet=quiet)
    entries, read = [], calibration.reader()
    for run in runs:
        entries += calibration.analyse(run, *[experiment_location(s, root) for s in run.sweeps], read=read)
    result = {
        "sweep": sweep.name,
        "seeds": seeds,
        "aa_seeds": aa,
        "runs": calibration.record(runs),
        "entries": entries,
        "metric": sweep.metric,
        "summary": calibration.summary(entries, sweep.metric),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    calibration.write(folder, result)
    return folder, result


def _refuse_other_trials(world_sweep: SweepSpec, root: Path) -> bool:
    """Whether the world's sweep ran before; an ExperimentError when it ran other trials than it plans now (other
    seeds, or rows of other mechanisms): Tune's restore would keep the old grid and the new trials never run."""
    experiment = experiment_location(world_sweep, root)
    saved = storage.read_json_if_exists(storage.join(experiment, "sweep.json"))
    if saved is None:
        return False
    planned = [trial_key(point) for point in grid_points(world_sweep)]
    if sorted(saved.get("expected", [])) != sorted(planned):
        raise ExperimentError(
            f"{experiment} ran trials {saved.get('expected')}, this calibration asks for {planned} (other seeds: "
            "--quick takes the first of each; or other mechanisms on this world): run it as it was, or remove "
            "that folder"
        )
    return True
