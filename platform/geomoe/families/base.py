"""What a model family is: its spec sections and the hooks jobs, sweeps, the CLI and serving call.

A family subclasses ``Family``, sets its class attributes, implements ``build_model`` and ``training_task``
(the worker side: model, step, evaluation), and either ``datasets`` + ``evaluate`` (the default ``train``:
one stage, the best epoch by ``best_by``, then a test evaluation of that checkpoint) or its own ``train``. Job
stages of its own are ``geomoe.core.stages.Stage`` objects in ``stages``; top-level job sections of its own (the ones
its stages read), ``config.JobSection`` classes in ``sections``; its Serve deployments, ``serve_deployments``.
It registers itself with ``geomoe.core.registry.register`` (built-in families through the ``geomoe.families``
entry points). Nothing outside a family's package names the family: everything dispatches through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from geomoe.core import storage
from geomoe.core.config import FamilyModelSpec, JobSection, JobSpec, TrainSpec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.stages import Stage

if TYPE_CHECKING:
    import torch

    from geomoe.on_ray.train.loop import LoopConfig, TrainingTask


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read back: the model in eval mode, the job spec it was trained with, the raw payload."""

    model: torch.nn.Module
    spec: JobSpec
    payload: dict[str, Any]
    tokenizer: Any = None  # a text family's tokenizer


@dataclass(frozen=True)
class TrainInputs:
    """What the default ``train`` fits on: Ray datasets by name ("train", optionally "val"), and the optimizer
    steps in one epoch."""

    datasets: dict[str, Any]
    steps_per_epoch: int


class Family:
    name: ClassVar[str]
    model_spec: ClassVar[type[FamilyModelSpec]]
    train_spec: ClassVar[type[TrainSpec]] = TrainSpec
    dataset_kind: ClassVar[str] = "retrieval"  # what its prepared data is (config.DATASET_KINDS)
    default: ClassVar[bool] = False  # the family of a ``model`` section without a name
    stages: ClassVar[tuple[Stage, ...]] = ()  # job stages of its own (geomoe.core.stages.Stage)
    sections: ClassVar[dict[str, type[JobSection]]] = {}  # top-level job sections of its own, by key
    best_by: ClassVar[str | None] = None  # a per-epoch metric to keep the best checkpoint by (max)

    # --- spec ---
    def check_job(self, spec: JobSpec) -> None:
        """Cross-section checks at validation time; raise ValueError("key: reason"). Default: none."""

    def epochs(self, train: TrainSpec) -> int:
        """Epochs of the default one-stage training (the train section's ``epochs``)."""
        return int(getattr(train, "epochs", 1))

    def training_epochs(self, train: TrainSpec) -> int:
        """Every epoch ``train`` runs, over all its stages (what a job's progress bar counts)."""
        return self.epochs(train)

    # --- model ---
    def build_model(self, model: FamilyModelSpec) -> torch.nn.Module:
        """The model of a ``model`` section (the family's ``model_spec``), with fresh weights."""
        raise NotImplementedError

    def parameter_count(self, model: FamilyModelSpec) -> dict[str, float]:
        """Millions of parameters (all, and trainable), as the papers' #P column."""
        params = list(self.build_model(model).parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return {"params_M": total / 1e6, "trainable_params_M": trainable / 1e6}

    def load_checkpoint(self, directory: str) -> Loaded:
        from geomoe.core.models.checkpoint import load_into, read_trained

        payload, spec = read_trained(directory)
        model = self.build_model(spec.model)
        load_into(model, payload["model"])
        return Loaded(model.eval(), spec, payload)

    # --- training (worker side) ---
    def training_task(self, spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
        raise NotImplementedError

    # --- driver side ---
    def prepare_inputs(self, spec: JobSpec, prepared: PreparedDataset) -> None:
        """Make once, before any training or sweep trial, what training needs besides data (say, tiny models)."""

    def datasets(self, spec: JobSpec, prepared: PreparedDataset) -> TrainInputs:
        raise NotImplementedError

    def evaluate(self, spec: JobSpec, checkpoint: str, prepared: PreparedDataset) -> dict[str, Any]:
        """The test evaluation of a trained checkpoint (JSON)."""
        return {}

    def train(self, spec: JobSpec, prepared: PreparedDataset, run_dir: str) -> dict[str, Any]:
        """The ``train`` stage: fit one stage (or reuse its record), then evaluate the kept checkpoint. The
        result always carries ``checkpoint`` (what later stages, sweeps and serving use)."""
        from geomoe.on_ray.train.loop import LoopConfig
        from geomoe.on_ray.train.run import cached_result, recorded_stage, run_trainer

        record = recorded_stage(spec, run_dir, 1)
        if record is None:
            inputs = self.datasets(spec, prepared)
            loop = LoopConfig.of(
                spec.train,
                spec.seed,
                spec.resources.num_workers,
                epochs=self.epochs(spec.train),
                steps_per_epoch=inputs.steps_per_epoch,
            )
            record = run_trainer(spec, run_dir, loop, inputs.datasets, best_by=self.best_by)
        checkpoint = record.location
        test = cached_result(
            storage.join(run_dir, "eval_test.json"), spec, 1, lambda: self.evaluate(spec, checkpoint, prepared)
        )
        return {"checkpoint": checkpoint, "best_epoch": record.epoch, "validation": record.reported, "test": test}

    # --- serving ---
    def serve_deployments(self) -> dict[str, Any]:
        """The Ray Serve deployments this family's checkpoints are served by, by the role the app gives them
        (geomoe.on_ray.serving.app: a retriever's ``QueryEncoder``, ``GallerySearch`` and ``Reranker``, a localizer's
        ``Localizer``). Default: none. A family with predictions of another kind implements ``predict`` instead."""
        return {}

    def predict(self, loaded: Loaded, inputs: dict[str, Any]) -> dict[str, Any]:
        """Predictions of a loaded checkpoint on a JSON object of ``inputs``, served at ``POST /predict/<name>``
        (geomoe.on_ray.serving.predictor) for a checkpoint the Serve config lists under ``predictors``; raise ValueError
        naming the input for inputs it refuses. Default: the family serves no predictions of its own."""
        raise NotImplementedError(f"{self.name} serves no predictions of its own")

    def serves_predictions(self) -> bool:
        return type(self).predict is not Family.predict

    # --- results ---
    def metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """The flat numbers a sweep trial reports, from the train stage's result."""
        test = {f"test_{k}": v for k, v in result.get("test", {}).items() if isinstance(v, int | float)}
        validation = {k: v for k, v in result.get("validation", {}).items() if isinstance(v, int | float)}
        return {k: float(v) for k, v in (test | validation).items()}

    def tracked_metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """What a job logs to its MLflow run: ``metrics`` and any a sweep does not rank by. Default: ``metrics``."""
        return self.metrics(result)

    def query_values(self, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """Per-query values of the ``metrics`` that are means over queries (metric name -> values whose mean is
        the metric): what a sweep's intervals, seed pooling and paired differences resample. Default: none."""
        return {}

    def query_sets(self, result: dict[str, Any]) -> dict[str, str]:
        """Metric name -> the fingerprint of the queries its ``query_values`` belong to (geomoe.core.stats.query_set):
        values are pooled or paired only within one query set. Default: none recorded."""
        return {}

    def report(self, spec: JobSpec, results: dict[str, Any]) -> str:
        """The train stage's results (model name -> result: "model" and any baselines) as the CLI prints them."""
        lines = [f"{spec.model.name} {spec.name}"]
        for name, result in results.items():
            lines += [f"  {name} {k}: {v:.4g}" for k, v in self.metrics(result).items()]
        return "\n".join(lines)
