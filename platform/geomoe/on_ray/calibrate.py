"""``geomoe calibrate``: a sweep's mechanisms on their planted and null synthgeo worlds, each world's trials as
``geomoe sweep`` runs them, then the calibration table (geomoe.core.sweep.calibration).

Every world's sweep (and its A/A sweep) keeps its own folder, its sweep.json and trials/, which the table is read
from; but all their trials run in one Ray Tune run (the calibration's tune/), so a world with one trial left does
not leave a slot idle while the next world waits: one mechanism at ``--quick`` is 6 trials in 3 rounds of 2, where
one Tuner per world sweep took 4 rounds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from geomoe.core import ownership, storage
from geomoe.core.config import SweepSpec
from geomoe.core.errors import ExperimentError
from geomoe.core.sweep import calibration, experiment_location, grid_points, load_sweep, trial_key
from geomoe.core.sweep.calibration import WORLD_TRIAL
from geomoe.on_ray.tune import fit_tuner, ready_sweep, run_trial, start_ray, tune_folder
from geomoe.on_ray.tune_runs import sweep_run

TRIALS_FILE = "world_trials.json"  # the names of the trials the calibration's Tune run started with


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
    ran = [_refuse_other_trials(s, root) for s in sweeps]  # all before any trains: a refusal costs nothing
    _fit_worlds(sweep, sweeps, base_path, folder, resume=resume, ran=any(ran), quiet=quiet)
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
            "the calibration's folder"
        )
    return True


def _fit_worlds(
    sweep: SweepSpec, sweeps: list[SweepSpec], base_path: Path, folder: str, resume: bool, ran: bool, quiet: bool
) -> None:
    """Every world sweep's trials in one Tune run in ``folder``/tune (``resume``: the interrupted one continued;
    ``ran``: some world sweep started before), each trial writing into its world sweep's folder as ``geomoe sweep``
    would; one MLflow parent run for the calibration, a child per trial."""
    from ray import tune

    root = Path.cwd().resolve()
    experiments = [experiment_location(s, root) for s in sweeps]
    for world_sweep, experiment in zip(sweeps, experiments, strict=True):
        ownership.claim_dir(experiment, ownership.Claim("output_root", world_sweep.name, "sweep"))
    tune_dir, fs, restorable = tune_folder(folder)
    if (restorable or ran) and not resume:
        raise ExperimentError(f"{folder} holds this calibration already: add --resume to continue it, or remove it")
    trials = {
        f"{s.name}/{trial_key(point)}": (s.model_dump(mode="json"), point, experiment)
        for s, experiment in zip(sweeps, experiments, strict=True)
        for point in grid_points(s)
    }
    _refuse_other_tune_trials(folder, list(trials), restorable)
    start_ray(sweeps[0], base_path)  # a world sweep's overrides: the calibration's own ones included
    for world_sweep, experiment in zip(sweeps, experiments, strict=True):
        ready_sweep(world_sweep, base_path, experiment, root)
    trainable = partial(run_world_trial, trials=trials, base_path=str(base_path), root=str(root))
    space = {WORLD_TRIAL: tune.grid_search(list(trials))}
    with sweep_run(f"{sweep.name}-calibration", folder, sweep.output_root) as (_, callbacks):
        if quiet:
            from geomoe.on_ray.tune_console import CalibrationConsole

            callbacks = [*callbacks, CalibrationConsole(sweep, trials)]
        resources = {"cpu": sweep.trial_cpus}
        fit_tuner(sweep, tune.with_resources(trainable, resources), space, (tune_dir, fs, restorable), callbacks, quiet)


def _refuse_other_tune_trials(folder: str, names: list[str], restorable: bool) -> None:
    """Tune restores the trials its run started with: a resume that plans others (a mechanism added or removed
    since) is refused, naming them; a new run records its trials (``TRIALS_FILE``)."""
    path = storage.join(folder, TRIALS_FILE)
    saved = storage.read_json_if_exists(path) if restorable else None
    if saved is None:
        storage.write_json_atomic(path, names)
        return
    added, gone = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
    if added or gone:
        raise ExperimentError(
            f"{folder}: its Tune run holds other trials than this calibration plans (added since: {added}; no longer "
            f"planned: {gone}); calibrate new mechanisms with --only, or remove that folder"
        )


def run_world_trial(
    config: dict[str, Any], trials: dict[str, tuple[dict[str, Any], dict[str, Any], str]], base_path: str, root: str
) -> None:
    """Tune trainable: the world sweep's trial that ``config`` names (``trials``: its sweep, values and folder)."""
    sweep_raw, point, experiment = trials[config[WORLD_TRIAL]]
    run_trial(point, sweep_raw=sweep_raw, base_path=base_path, experiment=experiment, root=root)
