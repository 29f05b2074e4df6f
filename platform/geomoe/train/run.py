"""Driver side of PE-MoE training: Ray Data inputs, TorchTrainer per stage, mining, evaluation.

Each step leaves a result file in the run folder; a rerun with the same job name skips finished steps,
and an interrupted Ray Train run resumes from its last checkpoint (same RunConfig name and storage path).
The run folder is a location (local path, shared mount or URI): Ray Train's storage is ``<run>/ray_train`` on
the same filesystem, so workers on any node checkpoint there and a restarted group resumes from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geomoe import storage
from geomoe.config import JobSpec
from geomoe.data.prepared import PreparedDataset

log = logging.getLogger(__name__)
COLUMNS = ["caption", "statements", "image_path", "image_id", "building_id", "platform"]


def split_rows(manifest: dict[str, Any], split: str, spec: JobSpec) -> pa.Table:
    """Rows of one split of a prepared table, with the expert index of each row's platform."""
    table = PreparedDataset.of(manifest).read_split(split, columns=[*COLUMNS, "augment"])
    expert_of = spec.pe_moe.expert_of()
    unknown = sorted(set(table["platform"].to_pylist()) - set(expert_of))
    if unknown:
        raise ValueError(f"model.experts: no expert owns platform(s) {unknown} present in the {split} split")
    experts = pa.array([expert_of[p] for p in table["platform"].to_pylist()], pa.int64())
    return table.append_column("expert", experts)


class DecodeImages:
    """Ray Data map: image paths -> normalised pixel arrays (and the mined negatives in stage 2)."""

    def __init__(self, size: int, negatives: bool) -> None:
        self.size, self.negatives = size, negatives

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geomoe.models.factory import image_array

        batch["image"] = np.stack([image_array(str(p), self.size) for p in batch["image_path"]])
        if self.negatives:
            batch["negatives"] = np.stack(
                [np.stack([image_array(str(p), self.size) for p in row]) for row in batch["negative_paths"]]
            )
        return batch


def training_dataset(table: pa.Table, spec: JobSpec, negatives: bool) -> Any:
    import ray.data

    # The prepared table is grouped by platform; shuffle it once so that batches mix platforms (the local
    # shuffle buffer alone would give runs of one platform, and the gate would chase the latest one).
    order = np.random.default_rng(spec.seed).permutation(table.num_rows)
    table = table.take(pa.array(order))
    blocks = max(1, min(table.num_rows // 64, 8))
    step = -(-table.num_rows // blocks)
    ds: Any = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    ds = ds.map_batches(
        DecodeImages(spec.pe_moe.image.image_size, negatives), batch_format="numpy", batch_size=64, num_cpus=0.5
    )
    return ds.materialize() if spec.train.materialize_inputs else ds


def fit_stage(
    spec: JobSpec,
    run_dir: str,
    stage: int,
    table: pa.Table,
    init: str | None,
    test_hooks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one PE-MoE training stage on Ray Train (or return its recorded result); returns {checkpoint, metrics}."""
    from geomoe.train.loop import train_loop

    recorded = recorded_stage(spec, run_dir, stage)
    if recorded is not None:
        return recorded
    datasets = {"train": training_dataset(table, spec, negatives=stage == 2)}
    steps = max(1, table.num_rows // spec.train.batch_size)
    return run_trainer(spec, run_dir, stage, train_loop, datasets, steps, init=init, test_hooks=test_hooks)


def run_trainer(
    spec: JobSpec,
    run_dir: str,
    stage: int,
    loop: Callable[[dict[str, Any]], None],
    datasets: dict[str, Any],
    steps_per_epoch: int,
    init: str | None = None,
    test_hooks: dict[str, Any] | None = None,
    best_by: str | None = None,
) -> dict[str, Any]:
    """One TorchTrainer fit of ``loop`` under the run folder, resumable; records and returns its result.

    ``best_by``: a reported metric to maximise; Ray Train then keeps the best checkpoints (and the latest, for
    resuming) and the record points at the best, not the last.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _forget_other_runs(spec, run_dir, stage)
    res = spec.resources
    config = {
        "spec": spec.model_dump(mode="json"),
        "stage": stage,
        "init_checkpoint": init,
        "steps_per_epoch": steps_per_epoch,
        **(test_hooks or {}),
    }
    keep = CheckpointConfig(num_to_keep=spec.train.keep_checkpoints, checkpoint_score_attribute=best_by)
    train_storage = storage.resolve(storage.join(run_dir, "ray_train"))
    trainer = TorchTrainer(
        loop,
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
    )
    result = trainer.fit()
    checkpoint = result.get_best_checkpoint(best_by, "max") if best_by else result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint (did it run zero epochs?)")
    to_uri = lambda path: storage.uri_of(train_storage, path)  # noqa: E731  (Ray reports paths in its filesystem)
    record: dict[str, Any] = {
        "checkpoint": to_uri(checkpoint.path),
        "metrics": result.metrics,
        "fingerprint": spec.stage_fingerprint(stage),
    }
    if best_by:
        kept = [(to_uri(ckpt.path), metrics) for ckpt, metrics in result.best_checkpoints or []]
        record["best"] = next(metrics for path, metrics in kept if path == record["checkpoint"])
        record["kept"] = [{"epoch": m["epoch"], best_by: m[best_by], "checkpoint": path} for path, m in kept]
    storage.write_json_atomic(storage.join(run_dir, f"stage{stage}.json"), record)
    return record


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


def recorded_stage(spec: JobSpec, run_dir: str, stage: int) -> dict[str, Any] | None:
    """The recorded result of a finished stage trained from the same data, model and training settings."""
    marker = storage.join(run_dir, f"stage{stage}.json")
    record = storage.read_json_if_exists(marker)
    if record is not None and record.get("fingerprint") == spec.stage_fingerprint(stage):
        log.info("stage %d already finished: %s", stage, marker)
        return dict(record)
    return None


def mine_negatives(spec: JobSpec, checkpoint: str, table: pa.Table) -> pa.Table:
    """Append ``negative_paths``: per row, its expert's highest-scoring images of other buildings."""
    from geomoe.models.checkpoint import load_pe_moe
    from geomoe.pipelines.embed import embed_images
    from geomoe.retrieval.embed import embed_texts
    from geomoe.retrieval.mining import mine_hard_negatives

    model, tokenizer, _, _ = load_pe_moe(checkpoint)
    rows = table.to_pylist()
    paths = sorted({r["image_path"] for r in rows})
    image_meta = {r["image_path"]: (r["building_id"], r["expert"]) for r in rows}
    vectors = embed_images(checkpoint, paths, concurrency=spec.resources.data_concurrency)
    texts, _ = embed_texts(model, tokenizer, [r["caption"] for r in rows], spec.pe_moe.text.max_length)
    negatives: list[list[str]] = [[] for _ in rows]
    for k, expert in enumerate(spec.pe_moe.experts):
        query_idx = [i for i, r in enumerate(rows) if r["expert"] == k]
        gallery_idx = [j for j, p in enumerate(paths) if image_meta[p][1] == k]
        if not query_idx:
            continue
        gallery_pos = {paths[j]: n for n, j in enumerate(gallery_idx)}
        found = mine_hard_negatives(
            texts[k, query_idx],
            np.array([rows[i]["building_id"] for i in query_idx]),
            vectors[k, gallery_idx],
            np.array([image_meta[paths[j]][0] for j in gallery_idx]),
            spec.train.hard_negatives,
            spec.train.mining_chunk,
            pool=spec.train.mining_pool,
            seed=spec.seed + k,
            positive_Q=np.array([gallery_pos[rows[i]["image_path"]] for i in query_idx])
            if spec.train.semi_hard
            else None,
        )
        if (found < 0).any():
            raise ValueError(
                f"expert {expert.name!r}: fewer than {spec.train.hard_negatives} images of other buildings to mine"
            )
        for i, picks in zip(query_idx, found, strict=True):
            negatives[i] = [paths[gallery_idx[j]] for j in picks]
    return table.append_column("negative_paths", pa.array(negatives, pa.list_(pa.string())))


def evaluate_checkpoint(spec: JobSpec, checkpoint: str, manifest: dict[str, Any]) -> dict[str, Any]:
    from geomoe.evaluate import evaluate_pe_moe, gallery_from_rows
    from geomoe.models.checkpoint import load_pe_moe
    from geomoe.pipelines.embed import embed_images

    model, tokenizer, _, _ = load_pe_moe(checkpoint)
    rows = split_rows(manifest, "test", spec).filter(pc.equal(pc.field("augment"), "")).to_pylist()
    images, _ = gallery_from_rows(rows)
    vectors = embed_images(checkpoint, [im["image_path"] for im in images], concurrency=spec.resources.data_concurrency)
    return evaluate_pe_moe(model, tokenizer, spec, rows, vectors)


def train_and_evaluate(spec: JobSpec, manifest: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Stage 1 -> evaluation -> mining -> stage 2 -> evaluation; each step skipped if already recorded."""
    table = split_rows(manifest, "train", spec)
    results: dict[str, Any] = {}
    stage1 = fit_stage(spec, run_dir, 1, table, None)
    results["stage1"] = cached_result(
        storage.join(run_dir, "eval_stage1.json"),
        spec,
        1,
        lambda: evaluate_checkpoint(spec, stage1["checkpoint"], manifest),
    )
    if spec.train.stage2_epochs:
        stage2 = recorded_stage(spec, run_dir, 2)  # a finished stage 2 needs no mining
        if stage2 is None:
            mined = mine_negatives(spec, stage1["checkpoint"], table)
            stage2 = fit_stage(spec, run_dir, 2, mined, stage1["checkpoint"])
        results["stage2"] = cached_result(
            storage.join(run_dir, "eval_stage2.json"),
            spec,
            2,
            lambda: evaluate_checkpoint(spec, stage2["checkpoint"], manifest),
        )
        results["checkpoint"] = stage2["checkpoint"]
    else:
        results["checkpoint"] = stage1["checkpoint"]
    return results


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
