"""A sweep on MLflow (Ray layer): a parent run per sweep, a child run per trial (Tune's MLflow callback), the best
trial's checkpoint registered (geomoe.core.tracking has the rest)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from geomoe.core import storage, tracking
from geomoe.core.config import SweepSpec
from geomoe.core.sweep.tables import RESULT_FILE

log = logging.getLogger(__name__)


@contextmanager
def sweep_run(name: str, experiment: str, output_root: str) -> Iterator[tuple[tracking.Tracker | None, list[Any]]]:
    """A sweep's parent run and the Tune callback that makes each trial a child run of it (Tune's MLflow
    integration, at the Tuner level: Ray Train's RunConfig takes no Tune callbacks). A resumed sweep continues
    the same parent run (its id is kept in ``<experiment>/tracking.json``)."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = tracking.store_uri(output_root)
    if uri is None:
        log.warning("no experiment tracking: %s is not set and %s is not local", tracking.ENV, output_root)
        yield None, []
        return
    marker = storage.join(experiment, "tracking.json")
    saved = storage.read_json_if_exists(marker)
    if saved is not None and saved.get("uri") == uri:
        tracker = tracking.Tracker(**saved)
        tracking.set_status(tracker, "RUNNING")
    else:
        tracker = tracking.start_run(uri, name, output_root, {"geomoe.experiment": experiment})
        storage.write_json_atomic(marker, tracker.to_json())

    class TrialRuns(MLflowLoggerCallback):  # a trial's results under names MLflow accepts (R@10 -> R_at_10)
        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            named = {tracking.metric_name(key): value for key, value in result.items()}
            super().log_trial_result(iteration, trial, named)

    trials = TrialRuns(uri, experiment_name=name, tags={"mlflow.parentRunId": tracker.run_id})
    before = os.environ.get(tracking.ENV)
    try:
        yield tracker, [trials]
    except BaseException as err:
        tracking.set_status(tracker, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        import mlflow

        # the callback set MLflow's process-wide tracking URI (and MLFLOW_TRACKING_URI): a later job in this
        # process would log into the sweep's store
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it
    tracking.set_status(tracker, "FINISHED")


def register_best(tracker: tracking.Tracker, sweep: SweepSpec, experiment: str) -> None:
    """The best finished trial's checkpoint registered as a version of the model named after the sweep, alias
    ``best``, with its metrics."""
    trials = storage.join(experiment, "trials")
    finished = []
    for relative, _ in storage.list_files(trials):
        if relative.endswith(f"/{RESULT_FILE}") and relative.count("/") == 1:
            outcome = storage.read_json(storage.join(trials, relative))
            if outcome.get("status") == "finished" and outcome.get("checkpoint") and sweep.metric in outcome["metrics"]:
                finished.append(outcome)
    if not finished:
        return
    sign = 1 if sweep.mode == "max" else -1
    best = max(finished, key=lambda o: sign * o["metrics"][sweep.metric])
    registered = tracking.register(tracker, sweep.name, best["checkpoint"], best["metrics"], alias="best")
    log.info("registered the best trial %s as %s", best["params"], registered)
