"""The per-worker training loop of SMGeo: train an epoch (augmented), validate (never augmented), report.

Every epoch reports a checkpoint with the validation metrics; Ray Train keeps the best by ``val_acc50`` (and
always the latest, for resuming), and the driver takes the best one, so "best" really is the best epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geomoe.config import JobSpec
from geomoe.data.localization import augment_pair, to_file_pixels
from geomoe.losses import smgeo_objective
from geomoe.metrics import clamped_iou
from geomoe.models.checkpoint import load_into
from geomoe.models.smgeo import SMGeo, decode_boxes
from geomoe.train.loop import (
    epoch_batches,
    make_optimizer,
    maybe_inject_failure,
    report_epoch,
    resumed_payload,
    warmup_cosine,
)

VAL_METRIC = "val_acc50"


def _tensors(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.asarray(batch[k])) for k in ("query", "click", "reference", "box"))


@torch.no_grad()
def validate(model: torch.nn.Module, shard: Any, batch_size: int, device: torch.device, size: int) -> dict[str, float]:
    """DetGeo metrics on this worker's validation shard, summed over all workers."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # count, IoU > 0.25, IoU > 0.5, IoU
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        query, click, reference, box = _tensors(batch)
        out = model(query.to(device), click.to(device), reference.to(device))
        pred = decode_boxes(out["heatmap_logits"], out["box"], (size, size)).float().cpu().numpy()
        wh = batch["reference_wh"]
        iou = clamped_iou(to_file_pixels(pred, wh, size), to_file_pixels(box.numpy(), wh, size), wh)
        sums += torch.tensor([len(iou), (iou > 0.25).sum(), (iou > 0.5).sum(), iou.sum()], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    n = max(1.0, float(sums[0]))
    return {
        "val_acc25": 100 * float(sums[1]) / n,
        VAL_METRIC: 100 * float(sums[2]) / n,
        "val_miou": 100 * float(sums[3]) / n,
    }


def smgeo_train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    spec = JobSpec.model_validate(config["spec"])
    model_spec, train = spec.smgeo, spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.seed + rank)
    augment_rng = torch.Generator().manual_seed(spec.seed * 1000 + rank)
    steps = int(config["steps_per_epoch"])
    per_worker = max(1, train.batch_size // world)
    size = model_spec.reference_size

    model = SMGeo(model_spec)
    payload = resumed_payload()
    start_epoch = 0 if payload is None else int(payload["epoch"]) + 1
    if payload is not None:
        load_into(model, payload["model"])
    core = model
    # unchosen experts get no gradient in a step: DDP must not wait for them
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(train, [p for p in core.parameters() if p.requires_grad], train.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(train.epochs * steps, train.warmup_ratio))
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
    autocast = device.type == "cuda" and train.mixed_precision
    shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, train.epochs):
        wrapped.train()
        sums: dict[str, float] = {}
        batches = epoch_batches(shard, per_worker, spec.seed * 1000 + epoch)
        for step, batch in zip(range(steps), batches, strict=False):
            maybe_inject_failure(config, epoch, step)
            query, click, reference, box = _tensors(batch)
            if train.augment:
                query, click, reference, box = augment_pair(query, click, reference, box, augment_rng)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                out = wrapped(query.to(device), click.to(device), reference.to(device))
                loss, parts = smgeo_objective(out, box.to(device), (size, size), model_spec.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(core.parameters(), train.grad_clip)
            optimizer.step()
            schedule.step()
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "start_epoch": start_epoch,
            **{k: v / max(1, steps) for k, v in sums.items()},
        }
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            metrics |= validate(wrapped, val_shard, per_worker, device, size)
        usage = np.array(core.expert_usage(), dtype=np.float64)
        if usage.size:  # cells using the busiest expert, averaged over layers: k/E is balanced, 1 = every cell
            metrics["busiest_expert_cells"] = float(
                (usage.max(axis=1) * model_spec.gmoe.top_k / usage.sum(axis=1)).mean()
            )
        report_epoch(metrics, core, spec, 1, epoch, optimizer, schedule)
