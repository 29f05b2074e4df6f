"""SMGeo's training step and per-epoch validation (worker side), run by the training engine.

Training pairs are augmented (bbox-safe flip and crop); validation never is. Validation predicts boxes with
``predict_input_boxes`` (fp32 whatever autocast is active), exactly as the test evaluation does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geomoe.core.collectives import all_reduce_sum
from geomoe.core.config import JobSpec
from geomoe.core.metrics import clamped_iou
from geomoe.families.smgeo.localization import augment_pair, to_file_pixels
from geomoe.families.smgeo.losses import smgeo_objective
from geomoe.families.smgeo.model import SMGeo, predict_input_boxes
from geomoe.families.smgeo.spec import SMGeoModelSpec, SMGeoTrainSpec
from geomoe.on_ray.train.loop import Batch, LoopConfig, TrainingTask

VAL_METRIC = "val_acc50"


def _tensors(batch: Batch) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.asarray(batch[k])) for k in ("query", "click", "reference", "box"))


def validate(model: torch.nn.Module, shard: Any, batch_size: int, device: torch.device, size: int) -> dict[str, float]:
    """DetGeo metrics on this worker's validation shard, summed over all workers."""
    sums = torch.zeros(4, dtype=torch.float64)  # count, IoU > 0.25, IoU > 0.5, IoU
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        query, click, reference, box = _tensors(batch)
        pred, _ = predict_input_boxes(model, query.to(device), click.to(device), reference.to(device))
        wh = batch["reference_wh"]
        iou = clamped_iou(to_file_pixels(pred, wh, size), to_file_pixels(box.numpy(), wh, size), wh)
        sums += torch.tensor([len(iou), (iou > 0.25).sum(), (iou > 0.5).sum(), iou.sum()], dtype=torch.float64)
    sums = all_reduce_sum(sums)
    n = max(1.0, float(sums[0]))
    return {
        "val_acc25": 100 * float(sums[1]) / n,
        VAL_METRIC: 100 * float(sums[2]) / n,
        "val_miou": 100 * float(sums[3]) / n,
    }


def training_task(spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
    import ray.train

    model_spec, train = spec.model_as(SMGeoModelSpec), spec.train_as(SMGeoTrainSpec)
    model = SMGeo(model_spec)
    augment_rng = torch.Generator().manual_seed(spec.seed * 1000 + rank)
    size = model_spec.reference_size

    def step(wrapped: torch.nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        query, click, reference, box = _tensors(batch)
        if train.augment:
            query, click, reference, box = augment_pair(query, click, reference, box, augment_rng)
        out = wrapped(query.to(device), click.to(device), reference.to(device))
        return smgeo_objective(out, box.to(device), (size, size), model_spec.loss)

    def evaluate(wrapped: torch.nn.Module, device: torch.device, batch_size: int) -> dict[str, float]:
        metrics = validate(wrapped, ray.train.get_dataset_shard("val"), batch_size, device, size)
        usage = np.array(model.expert_usage(), dtype=np.float64)
        if usage.size:  # cells using the busiest expert, averaged over layers: k/E is balanced, 1 = every cell
            busiest = usage.max(axis=1) * model_spec.gmoe.top_k / usage.sum(axis=1)
            metrics["busiest_expert_cells"] = float(busiest.mean())
        return metrics

    return TrainingTask(model=model, step=step, evaluate=evaluate)
