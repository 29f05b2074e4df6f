"""What ``geomoe sweep`` shows while it runs (Ray layer: a Tune callback in the driver): a bar over the sweep's
trials, finished / running / failed and the best so far, and one line per trial that ends, on stderr; the report
follows on stdout. Every worker's output goes to the sweep's logs folder (``geomoe.core.logs``), as a job's does."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ray.tune import Callback
from tqdm import tqdm

from geomoe.core import storage
from geomoe.core.config import SweepSpec
from geomoe.core.sweep import ordered_point, trial_key
from geomoe.core.sweep.calibration import WORLD_TRIAL
from geomoe.core.sweep.tables import RESULT_FILE


class SweepConsole(Callback):
    def __init__(self, sweep: SweepSpec, experiment: str, total: int, stream: TextIO | None = None) -> None:
        self.sweep, self.experiment, self.total = sweep, experiment, total
        self.stream = stream or sys.stderr
        self.running: set[str] = set()
        self.finished = self.failed = 0
        self.best: tuple[float, str] | None = None
        self.bar = tqdm(total=total, unit="trial", file=self.stream, leave=True) if self.stream.isatty() else None

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._status()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        value = (trial.last_result or {}).get(self.sweep.metric)
        key = self._key(trial)
        if value is None:
            self._ended(f"trial {key}: finished without {self.sweep.metric}", failed=True)
            return
        better = self.best is None or (value > self.best[0] if self.sweep.mode == "max" else value < self.best[0])
        if better:
            self.best = (float(value), key)
        self._ended(f"trial {key}: {self.sweep.metric} {float(value):.2f}", failed=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        key = self._key(trial)
        recorded = storage.read_json_if_exists(self._result_path(trial)) or {}
        error = str(recorded.get("error", "see the sweep's logs")).splitlines()[0][:160]
        self._ended(f"trial {key}: failed: {error}", failed=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def _key(self, trial: Any) -> str:
        return trial_key(ordered_point(self.sweep, dict(trial.config)))

    def _result_path(self, trial: Any) -> str:
        return storage.join(self.experiment, "trials", self._key(trial), RESULT_FILE)

    def _ended(self, line: str, failed: bool) -> None:
        self.failed += failed
        self.finished += not failed
        done = self.finished + self.failed
        text = f"  [{done}/{self.total}] {line}"
        if self.bar is not None:
            self.bar.write(text)
            self.bar.update(1)
        else:
            print(text, file=self.stream, flush=True)
        self._status()

    def _status(self) -> None:
        best = f"; best {self.sweep.metric} {self.best[0]:.2f} ({self.best[1]})" if self.best else ""
        summary = f"finished {self.finished}, running {len(self.running)}, failed {self.failed}{best}"
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=True)


class CalibrationConsole(SweepConsole):
    """The console of a calibration's one Tune run over its world sweeps' trials (geomoe.on_ray.calibrate):
    ``trials`` maps a trial's name, ``<world sweep>/<trial key>``, to (its sweep, its values, its sweep's folder)."""

    def __init__(self, sweep: SweepSpec, trials: dict[str, tuple[Any, Any, str]], stream: TextIO | None = None) -> None:
        super().__init__(sweep, "", len(trials), stream)
        self.trials = trials

    def _key(self, trial: Any) -> str:
        return str(trial.config[WORLD_TRIAL])

    def _result_path(self, trial: Any) -> str:
        _, point, experiment = self.trials[self._key(trial)]
        return storage.join(experiment, "trials", trial_key(point), RESULT_FILE)
