"""Driver side of training, for every family: one TorchTrainer fit per stage on the training engine, recorded.

Each stage leaves a result file in the run folder; a rerun with the same job name skips finished stages,
and an interrupted Ray Train run resumes from its last checkpoint (same RunConfig name and storage path).
The run folder is a location (local path, shared mount or URI): Ray Train's storage is ``<run>/ray_train`` on
the same filesystem, so workers on any node checkpoint there and a restarted group resumes from there.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from geomoe.core import storage, tracking
from geomoe.core.config import JobSpec
from geomoe.core.job_results import Checkpoint
from geomoe.on_ray.ray_env import sigint_kept
from geomoe.on_ray.train.loop import LoopConfig

log = logging.getLogger(__name__)


def run_trainer(
    spec: JobSpec, run_dir: str, loop: LoopConfig, datasets: dict[str, Any], best_by: str | None = None
) -> Checkpoint:
    """One TorchTrainer fit of the family's task on the training engine (``loop`` says what the stage does),
    under the run folder, resumable; records and returns its result.

    ``best_by``: a reported metric to maximise; Ray Train then keeps the best checkpoints (and the latest, for
    resuming) and the record points at the best, not the last.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from geomoe.on_ray.train.loop import train_worker

    stage = loop.stage
    _forget_other_runs(spec, run_dir, stage)
    res = spec.resources
    tracker = tracking.current()  # the job's run, for the loop's rank 0 to log each epoch under
    config = {
        "spec": spec.model_dump(mode="json"),
        "loop": loop.model_dump(mode="json"),
        "tracking": tracker.to_json() if tracker else None,
    }
    keep = CheckpointConfig(num_to_keep=spec.train.keep_checkpoints, checkpoint_score_attribute=best_by)
    train_storage = storage.resolve(storage.join(run_dir, "ray_train"))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker, **res.worker_resources},
            placement_strategy=res.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"stage{stage}",
            storage_path=train_storage.path,
            storage_filesystem=None if train_storage.local else train_storage.fs,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=keep,
            callbacks=_tune_callbacks(),
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=_ordered_ingest()),
    )
    with sigint_kept():  # fit() installs its own SIGINT handler and leaves it
        result = trainer.fit()
    checkpoint = result.get_best_checkpoint(best_by, "max") if best_by else result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint (did it run zero epochs?)")
    to_uri = lambda path: storage.uri_of(train_storage, path)  # noqa: E731  (Ray reports paths in its filesystem)
    location = to_uri(checkpoint.path)
    best, listed = None, []
    if best_by:
        kept = [(to_uri(ckpt.path), metrics) for ckpt, metrics in result.best_checkpoints or []]
        best = next(metrics for path, metrics in kept if path == location)
        listed = [{"epoch": m["epoch"], best_by: m[best_by], "checkpoint": path} for path, m in kept]
    record = Checkpoint(location, dict(result.metrics or {}), spec.stage_fingerprint(stage), best, listed)
    record.save(storage.join(run_dir, f"stage{stage}.json"))
    return record


def _ordered_ingest() -> Any:
    """Ray Train's ingest options with the blocks kept in order: then the split across workers is deterministic
    too (Ray's splitter ignores locality hints under preserve_order), so a seed reproduces a run's batches."""
    from ray.data import DataContext

    # the driver's options, as DataConfig.default_ingest_options() carries them over (copied rather than rebuilt:
    # rebuilding passes a deprecated field through the constructor and Ray warns on every fit)
    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


_TUNE_METRIC: list[str] = []  # set in a sweep trial's process: the metric Tune schedules on


def report_epochs_to_tune(metric: str) -> None:
    """In a sweep trial: forward every epoch report that carries ``metric`` to Tune (for ASHA)."""
    _TUNE_METRIC[:] = [metric]


def _tune_callbacks() -> list[Any]:
    """Inside a Tune trial, forward the epoch reports that carry the sweep's metric (Tune rejects a result
    without it; PE-MoE's epochs report losses only, SMGeo's also val_acc50)."""
    if not _TUNE_METRIC:
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    class WithMetric(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics and _TUNE_METRIC[0] in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return [WithMetric()]


def _forget_other_runs(spec: JobSpec, run_dir: str, stage: int) -> None:
    """Ray Train resumes a run from the checkpoints under its name; keep them only if they come from this spec.

    An interrupted run of the same spec resumes; a run of a changed spec (say, a new stage-2 learning rate)
    must start over instead of resuming someone else's epochs.
    """
    runs = storage.join(run_dir, "ray_train", f"stage{stage}")
    marker = storage.join(run_dir, "ray_train", f"stage{stage}.fingerprint")
    fingerprint = spec.stage_fingerprint(stage)
    if storage.exists(runs) and (not storage.is_file(marker) or storage.read_text(marker) != fingerprint):
        log.info("stage %d: checkpoints under %s come from another spec; starting over", stage, runs)
        storage.delete(runs)
    storage.write_text_atomic(marker, fingerprint)


def recorded_stage(spec: JobSpec, run_dir: str, stage: int) -> Checkpoint | None:
    """The recorded result of a finished stage trained from the same data, model and training settings."""
    marker = storage.join(run_dir, f"stage{stage}.json")
    record = Checkpoint.load(marker)
    if record is not None and record.fingerprint == spec.stage_fingerprint(stage):
        log.info("stage %d already finished: %s", stage, marker)
        return record
    return None


def cached_result(path: str, spec: JobSpec, stage: int, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An evaluation, recomputed only when the stage's training, the evaluation settings or a caption store
    it re-ranks with changed (a caption stage may rewrite a store under the same name)."""
    stores = [storage.file_sha256(r.captions)[:16] for r in spec.eval.rerank if storage.is_file(r.captions)]
    key = "".join([spec.stage_fingerprint(stage), spec.fingerprint("eval"), *stores])
    saved = storage.read_json_if_exists(path)
    if saved is not None and saved.get("fingerprint") == key:
        return dict(saved["result"])
    result = compute()
    storage.write_json_atomic(path, {"fingerprint": key, "result": result})
    return dict(result)
