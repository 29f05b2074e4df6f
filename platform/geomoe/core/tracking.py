"""Experiment tracking and a model registry on MLflow.

Every job is an MLflow run (experiment = the job's name): its resolved spec (parameters, and the YAML as an
artifact), the result tables, every model's metrics and the time per stage. Each training stage of each model is a
child run that the Ray Train loop's rank 0 fills epoch by epoch (``epoch_logger``). The job's final model is
registered as a version of the model named after the job, tagged with its metrics and linked to the job's run;
``models:/<name>/<version>`` or ``models:/<name>@<alias>`` then works wherever a checkpoint is read.

Where runs go: ``MLFLOW_TRACKING_URI`` (a tracking server: the cluster case); without it, an embedded SQLite
store at ``<output_root>/mlflow.db`` with artifacts under ``<output_root>/mlartifacts`` (a bucket cannot hold a
SQLite database: a job whose outputs are URIs needs a server, and runs untracked with a warning otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from geomoe.core import storage
from geomoe.core.cache import cache_root
from geomoe.core.config import JobSpec
from geomoe.core.errors import ModelError

log = logging.getLogger(__name__)
ENV = "MLFLOW_TRACKING_URI"
MODEL_URI = "models:/"


@dataclass(frozen=True)
class Tracker:
    """Where a job's run lives; crosses to Ray tasks and Train workers as JSON."""

    uri: str
    experiment_id: str
    run_id: str
    model: str = "model"  # the model (or baseline) a training stage belongs to

    def for_model(self, name: str) -> Tracker:
        return replace(self, model=name)

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def store_uri(output_root: str) -> str | None:
    """The tracking store of a job whose outputs go under ``output_root``; None when there is none to use."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    if storage.is_local(output_root):
        return f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"
    return None


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    from geomoe.core.logs import capture_console

    capture_console("mlflow")  # MLflow's own console handler: its INFO lines to the run's log file
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_root(uri: str, output_root: str) -> str | None:
    """Where a new experiment keeps its artifacts: under a local output root for a SQLite store (MLflow's
    default, ./mlruns, is relative to whatever the working folder is); a server's own default otherwise."""
    if uri.startswith("sqlite:") and storage.is_local(output_root):
        return (Path(output_root).resolve() / "mlartifacts").as_uri()
    return None


def _experiment(client: Any, name: str, artifacts: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifacts))


def flat_params(spec: JobSpec) -> dict[str, str]:
    """The resolved spec as dotted parameters (MLflow keeps at most 6,000 characters a value)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]

    walk("", spec.model_dump(mode="json"))
    return flat


def start_run(uri: str, name: str, output_root: str, tags: dict[str, str]) -> Tracker:
    """A new run named ``name`` in the experiment of that name (created with its artifacts under a local output
    root for a SQLite store)."""
    client = _client(uri)
    experiment = _experiment(client, name, artifact_root(uri, output_root))
    run = client.create_run(experiment, run_name=name, tags=tags)
    return Tracker(uri, experiment, run.info.run_id)


def set_status(tracker: Tracker, status: str) -> None:
    """RUNNING again (a resumed sweep), or FINISHED, FAILED, KILLED."""
    client = _client(tracker.uri)
    if status == "RUNNING":
        client.update_run(tracker.run_id, status=status)
    else:
        client.set_terminated(tracker.run_id, status)


@contextmanager
def job_run(spec: JobSpec, run_dir: str) -> Iterator[Tracker | None]:
    """The job's MLflow run, open while the job runs, FINISHED or FAILED after it; None when untracked."""
    uri = store_uri(spec.output_root)
    if uri is None:
        log.warning("no experiment tracking: %s is not set and %s is not a local path", ENV, spec.output_root)
        yield None
        return
    tracker = start_run(uri, spec.name, spec.output_root, {"geomoe.run_dir": run_dir, "geomoe.family": spec.model.name})
    client = _client(uri)
    _log_spec(client, tracker, spec)
    try:
        yield tracker
    except BaseException:
        set_status(tracker, "FAILED")
        raise
    set_status(tracker, "FINISHED")


def _log_spec(client: Any, tracker: Tracker, spec: JobSpec) -> None:
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in sorted(flat_params(spec).items())]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a request
        client.log_batch(tracker.run_id, params=params[start : start + 100])
    _log_text(client, tracker, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")


def _log_text(client: Any, tracker: Tracker, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        client.log_artifact(tracker.run_id, str(path))


def log_results(tracker: Tracker, metrics: dict[str, float], tables: str, results: dict[str, Any]) -> None:
    """A finished job's numbers (``metrics``: name -> value), its printed tables and its results file."""
    from mlflow.entities import Metric

    client = _client(tracker.uri)
    stamp = int(time.time() * 1000)
    values = [Metric(metric_name(k), float(v), stamp, 0) for k, v in sorted(metrics.items())]
    for start in range(0, len(values), 1000):
        client.log_batch(tracker.run_id, metrics=values[start : start + 1000])
    _log_text(client, tracker, tables, "tables.txt")
    _log_text(client, tracker, json.dumps(results, indent=1, default=str), "results.json")


def metric_name(name: str) -> str:
    """A name MLflow accepts (letters, digits, _ - . / : and spaces): ``R@10`` -> ``R_at_10``."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def register(tracker: Tracker, name: str, checkpoint: str, metrics: dict[str, float], alias: str | None = None) -> str:
    """The checkpoint as a new version of model ``name``, tagged with ``metrics``; a checkpoint
    in object storage is referenced where it is, a local one is copied into the run's artifacts first (so the
    registry can hand it to a machine that does not share this disk). Returns ``models:/<name>/<version>``."""
    client = _client(tracker.uri)
    if storage.is_local(checkpoint):
        client.log_artifacts(tracker.run_id, checkpoint, "checkpoint")
        source = f"runs:/{tracker.run_id}/checkpoint"
    else:
        source = checkpoint
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name, description="geomoe: the final model of each run of this job")
    tags = {f"metric.{metric_name(k)}": f"{v:.6g}" for k, v in metrics.items()} | {"geomoe.checkpoint": checkpoint}
    version = client.create_model_version(name, source=source, run_id=tracker.run_id, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return f"{MODEL_URI}{name}/{version.version}"


def is_model_uri(location: str) -> bool:
    return str(location).startswith(MODEL_URI)


def _version(client: Any, uri: str) -> Any:
    """``models:/name/3``, ``models:/name/latest`` or ``models:/name@alias`` -> its ModelVersion; a ModelError
    naming it when missing (the CLI prints it as one line)."""
    from mlflow.exceptions import MlflowException

    name, _, rest = uri[len(MODEL_URI) :].partition("/")
    name, _, alias = name.partition("@")
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if rest == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            return max(versions, key=lambda v: int(v.version)) if versions else client.get_model_version(name, "0")
        return client.get_model_version(name, rest)
    except MlflowException as err:
        raise ModelError(f"{uri}: not in the model registry at {storage.redact(client._registry_uri)}") from err


def registry_uri() -> str:
    """The registry ``models:/`` URIs name: the tracking server, else the embedded store of the default output
    root (``runs/mlflow.db`` under the working folder), which must exist (reading never creates one)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    database = Path("runs", "mlflow.db").resolve()
    if not database.is_file():
        raise ModelError(f"no model registry: {ENV} is not set and {database} does not exist")
    return f"sqlite:///{database}"


def checkpoint_location(location: str, cache: Path | None = None) -> str:
    """Where a checkpoint can be read: ``location`` itself, or for a registry URI its version's source (a path or
    URI as is; run artifacts downloaded once into the local cache)."""
    if not is_model_uri(location):
        return location
    import mlflow.artifacts

    version = _version(_client(registry_uri()), location)
    if not str(version.source).startswith(("runs:/", "mlflow-artifacts:", MODEL_URI)):
        return str(version.source)
    target = (cache or cache_root()) / "registry" / version.name / str(version.version)
    if not (target / "checkpoint").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as staging:  # whole or not at all
            mlflow.artifacts.download_artifacts(version.source, dst_path=staging, tracking_uri=registry_uri())
            Path(staging, "checkpoint").rename(target / "checkpoint")
    return str(target / "checkpoint")


_ACTIVE: list[Tracker] = []


def current() -> Tracker | None:
    """The tracker of the model being trained in this process (set by ``active``)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def active(tracker: Tracker | None) -> Iterator[None]:
    if tracker is None:
        yield
        return
    _ACTIVE.append(tracker)
    try:
        yield
    finally:
        _ACTIVE.pop()
