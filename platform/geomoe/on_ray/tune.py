"""``geomoe sweep`` on Ray Tune: a SweepSpec becomes a Tuner whose trainable fits the trial's TorchTrainer(s).

Train inside Tune the way Ray 2.60 supports it: the trainable is a function that builds and fits the
TorchTrainer (through the same code a job uses), reserving only ``trial_cpus`` for itself; its Train workers get
their own placement group. ``max_concurrent`` trials run at once, so a 2-core machine runs two small trials and
a GPU cluster packs as many as its GPUs take. Shared inputs (synthetic data, prepared tables, tiny models) are
made once by the driver before any trial starts: concurrent trials never write the same folder.

Results live under <output_root>/<name>/, a local path or a URI (the cluster's object store): tune/ (Tune's
experiment, restorable), trials/<key>/ (each trial's Ray Train runs and trial_result.json), sweep.json and the
report. ``resume`` continues an interrupted sweep: finished trials are not rerun, errored and unfinished ones
are; everything it needs is in that folder, so it works from a machine that has only the sweep spec.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from geomoe.core import ownership, storage
from geomoe.core.config import SweepSpec, load_job
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import ExperimentError, SpecError
from geomoe.core.stats import intervals
from geomoe.core.sweep import (
    SEED,
    VARIANT,
    benchmark,
    experiment_location,
    grid_points,
    load_sweep,
    ordered_point,
    trial_count,
    trial_dataset,
    trial_key,
    trial_spec,
)
from geomoe.core.sweep.tables import RESULT_FILE, write_per_query
from geomoe.on_ray.ray_env import sigint_kept
from geomoe.on_ray.tune_runs import register_best, sweep_run

log = logging.getLogger(__name__)


def param_space(sweep: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {VARIANT: tune.grid_search(list(sweep.variants))} if sweep.variants else {}
    for key, p in sweep.params.items():
        if p.grid is not None:
            space[key] = tune.grid_search(p.grid)
        elif p.choice is not None:
            space[key] = tune.choice(p.choice)
        elif p.uniform is not None:
            space[key] = tune.uniform(*p.uniform)
        elif p.loguniform is not None:
            space[key] = tune.loguniform(*p.loguniform)
    if sweep.seeds:
        space[SEED] = tune.grid_search(list(sweep.seeds))
    return space


def run_trial(config: dict[str, Any], sweep_raw: dict[str, Any], base_path: str, experiment: str, root: str) -> None:
    """Tune trainable: one trial = the trial's job trained (and evaluated) on Ray Train, its metrics reported.

    The outcome is also written to trials/<key>/trial_result.json, a failure with its error, so the report
    shows what happened to every trial, never a blank. A trial whose file already says "finished" for the same
    resolved job (its fingerprint) reports that file's metrics and trains nothing: Tune may restore a trial as
    unfinished when the sweep was interrupted between the trial's write and Tune's own bookkeeping."""
    from geomoe.on_ray.jobs import family_of
    from geomoe.on_ray.train.run import report_epochs_to_tune
    from ray import tune

    sweep = SweepSpec.model_validate(sweep_raw)
    point = ordered_point(sweep, config)
    run_dir = storage.join(experiment, "trials", trial_key(point))
    result_path = storage.join(run_dir, RESULT_FILE)
    try:
        spec = trial_spec(sweep, Path(base_path), point, experiment, Path(root))
        fingerprint = spec.fingerprint()
        done = finished_result(result_path, fingerprint)
        if done is not None:
            log.info("trial %s finished before (%s): reporting its recorded result", trial_key(point), fingerprint)
            tune.report(done["metrics"])
            return
        report_epochs_to_tune(sweep.metric)
        prepared = PreparedDataset.open(trial_dataset(spec), "a sweep trial (the driver prepares it)")
        family = family_of(spec)
        result = family.train(spec, prepared, run_dir)
        metrics = family.metrics(result) | family.parameter_count(spec.model)
        per_query = family.query_values(result)  # values of the metrics that are means over queries
        write_per_query(run_dir, per_query)  # before the result file: a "finished" file has its values beside it
    except Exception as err:
        outcome: dict[str, Any] = {"params": point, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        outcome["traceback"] = traceback.format_exc()[-4000:]
        storage.write_json_atomic(result_path, outcome)
        raise
    outcome = {"params": point, "status": "finished", "fingerprint": fingerprint, "metrics": metrics}
    outcome["checkpoint"] = result.get("checkpoint")  # what the sweep registers when this trial is the best
    outcome |= {"intervals": intervals(per_query), "query_sets": family.query_sets(result)}
    storage.write_json_atomic(result_path, outcome)
    tune.report(metrics)


def finished_result(path: str, fingerprint: str) -> dict[str, Any] | None:
    """The recorded outcome at ``path`` when it is a finished trial of the job with ``fingerprint``."""
    saved = storage.read_json_if_exists(path)
    if saved is None or saved.get("status") != "finished" or saved.get("fingerprint") != fingerprint:
        return None
    return dict(saved)


def prepare_inputs(sweep: SweepSpec, base_path: Path, experiment: str, root: Path) -> None:
    """Synthesize, prepare, refine and build tiny models once, for every distinct prepared table and refinement
    the trials train on (grid sweeps: each variant's; searchers: the base job's), before any trial runs."""
    from geomoe.on_ray.jobs import family_of, run_job

    base = load_job(base_path, list(sweep.overrides))
    stages = [s for s in base.stages if s == "synth"]
    if stages:
        run_job(base.model_copy(update={"stages": stages, "output_root": storage.join(experiment, "prepare")}))
    points = grid_points(sweep) if sweep.searcher == "grid" else [{}]
    done: set[tuple[str, str]] = set()
    for point in points:
        try:
            spec = trial_spec(sweep, base_path, point, experiment, root)
        except SpecError as err:  # the trial fails with this error and the report shows it
            log.warning("trial %s is not a valid job: %s", point, err)
            continue
        steps = [("prepare", spec.preprocess.output_dir)] + (
            [("refine", spec.refine.output_dir)] if spec.refine else []
        )
        for stage, location in steps:
            if (stage, location) not in done:
                done.add((stage, location))
                output_root = storage.join(experiment, "prepare")
                run_job(spec.model_copy(update={"stages": [stage], "output_root": output_root}))
        family_of(spec).prepare_inputs(spec, PreparedDataset.open(trial_dataset(spec)))


def run_sweep(
    path: str | Path,
    quickstart: bool = False,
    resume: bool = False,
    overrides: Sequence[str] = (),
    quiet: bool = False,
) -> str:
    """Run (or with ``resume`` continue) the sweep at ``path``, ``overrides`` applied to its base job; returns its
    experiment location. ``quiet``: Tune's own status tables off, a bar over the trials and a line per trial that
    ends instead (``geomoe.on_ray.tune_console``)."""
    sweep, base_path = load_sweep(path, quickstart, overrides)
    return run_loaded_sweep(sweep, base_path, resume, quiet)


def run_loaded_sweep(sweep: SweepSpec, base_path: Path, resume: bool = False, quiet: bool = False) -> str:
    """``run_sweep`` of a sweep spec already loaded."""
    from ray import tune

    root = Path.cwd().resolve()
    experiment = experiment_location(sweep, root)
    ownership.claim_dir(experiment, ownership.Claim("output_root", sweep.name, "sweep"))  # before Tune writes there
    tune_dir, fs, restorable = tune_folder(experiment)
    if restorable and not resume:
        raise ExperimentError(f"{experiment} holds this sweep already: add --resume to continue it, or remove it")
    start_ray(sweep, base_path)
    ready_sweep(sweep, base_path, experiment, root)
    trainable = tune.with_resources(
        partial(
            run_trial,
            sweep_raw=sweep.model_dump(mode="json"),
            base_path=str(base_path),
            experiment=experiment,
            root=str(root),
        ),
        {"cpu": sweep.trial_cpus},
    )
    with sweep_run(sweep.name, experiment, sweep.output_root) as (tracker, callbacks):
        if quiet:
            from geomoe.on_ray.tune_console import SweepConsole

            callbacks = [*callbacks, SweepConsole(sweep, experiment, trial_count(sweep))]
        fit_tuner(sweep, trainable, param_space(sweep), (tune_dir, fs, restorable), callbacks, quiet)
        if tracker is not None:
            register_best(tracker, sweep, experiment)
    return experiment


def tune_folder(experiment: str) -> tuple[str, Any, bool]:
    """(Tune's folder inside ``experiment``, its storage_filesystem: None when local, whether it can be restored)."""
    from ray import tune

    tune_fs, tune_dir = storage.filesystem_and_path(storage.join(experiment, "tune"))
    fs = None if storage.is_local(experiment) else tune_fs  # Tune's storage_filesystem for an object store
    return tune_dir, fs, tune.Tuner.can_restore(tune_dir, storage_filesystem=fs)


def start_ray(sweep: SweepSpec, base_path: Path) -> None:
    """A Ray cluster for the sweep's base job's resources (the running one when there is one)."""
    from geomoe.on_ray.ray_env import ensure_ray

    ensure_ray(load_job(base_path, list(sweep.overrides)).resources, dashboard=True)


def ready_sweep(sweep: SweepSpec, base_path: Path, experiment: str, root: Path) -> None:
    """The trials' shared inputs made (``prepare_inputs``) and sweep.json written: the sweep's spec, its expected
    trials and the benchmark, which the report and ``--resume`` read."""
    prepare_inputs(sweep, base_path, experiment, root)
    expected = [trial_key(p) for p in grid_points(sweep)] if sweep.searcher == "grid" else []
    storage.write_json_atomic(
        storage.join(experiment, "sweep.json"),
        {
            "sweep": sweep.model_dump(mode="json"),
            "base": str(base_path),
            "root": str(root),
            "expected": expected,
            "benchmark": benchmark(load_job(base_path, list(sweep.overrides))),
        },
    )


def fit_tuner(
    sweep: SweepSpec,
    trainable: Any,
    space: dict[str, Any],
    folder: tuple[str, Any, bool],
    callbacks: list[Any],
    quiet: bool,
) -> None:
    """Fit a new Tuner over ``space``, or the interrupted one restored (``folder``: ``tune_folder``'s answer)."""
    with sigint_kept():  # Tune's handler stays installed after fit() otherwise
        _tuner(sweep, trainable, space, *folder, callbacks, quiet).fit()


def _tuner(
    sweep: SweepSpec,
    trainable: Any,
    space: dict[str, Any],
    tune_dir: str,
    fs: Any,
    restorable: bool,
    callbacks: list[Any],
    quiet: bool,
) -> Any:
    """A new Tuner, or the interrupted one restored (Tune restores its run config, callbacks included, from the
    experiment: a resumed sweep's console starts its counts again from the restored trials)."""
    from ray import tune

    if restorable:
        log.info("resuming the sweep in %s", tune_dir)
        return tune.Tuner.restore(tune_dir, trainable, resume_errored=True, storage_filesystem=fs)
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage.parent(tune_dir),
        storage_filesystem=fs,
        verbose=0 if quiet else 1,
        callbacks=callbacks,
    )
    return tune.Tuner(trainable, param_space=space, tune_config=_tune_config(sweep), run_config=run_config)


def _tune_config(sweep: SweepSpec) -> Any:
    from ray import tune

    search_alg = None
    if sweep.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=0)
    scheduler = None
    if sweep.scheduler is not None:
        from ray.tune.schedulers import ASHAScheduler

        a = sweep.scheduler
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=a.max_t,
            grace_period=a.grace_period,
            reduction_factor=a.reduction_factor,
        )
    return tune.TuneConfig(
        metric=sweep.metric,
        mode=sweep.mode,
        num_samples=sweep.num_samples,
        max_concurrent_trials=sweep.max_concurrent,
        search_alg=search_alg,
        scheduler=scheduler,
    )
