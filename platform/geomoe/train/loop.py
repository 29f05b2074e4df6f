"""The per-worker training loop of PE-MoE (stage 1: contrastive; stage 2: + mined hard negatives)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomoe.config import JobSpec, TrainSpec
from geomoe.losses import pe_moe_objective
from geomoe.models.checkpoint import load_into, read_checkpoint, save_checkpoint
from geomoe.models.factory import build_pe_moe, tokenize


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Any:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(train: TrainSpec, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam or AdamW (decoupled weight decay) as ``train.optimizer`` says."""
    kind = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=train.weight_decay)


def _texts(batch: dict[str, np.ndarray], use_statements: bool, rng: np.random.Generator) -> list[str]:
    """The caption, or half of the time one of its short statements (PE-MoE's sentence-level alignment)."""
    texts = []
    for caption, statements in zip(batch["caption"], batch["statements"], strict=True):
        if use_statements and len(statements) > 1 and rng.random() < 0.5:
            caption = statements[int(rng.integers(0, len(statements)))]
        texts.append(str(caption))
    return texts


def maybe_inject_failure(config: dict[str, Any], epoch: int, step: int) -> None:
    """Test hooks: kill this worker process once at (epoch, step) to exercise FailureConfig recovery; or
    pause before each step of a later epoch, so a test can take a node away while the run is still going."""
    if epoch > 0 and config.get("step_pause_s"):
        time.sleep(float(config["step_pause_s"]))
    fail = config.get("fail_once_at")
    if fail and [epoch, step] == list(fail["at"]) and not Path(fail["marker"]).exists():
        Path(fail["marker"]).write_text("killed")
        os._exit(1)


def resumed_payload() -> dict[str, Any] | None:
    """The checkpoint Ray Train hands a restarted (or rerun) worker group, read; None on a fresh start."""
    import ray.train

    resumed = ray.train.get_checkpoint()
    if resumed is None:
        return None
    with resumed.as_directory() as directory:
        return read_checkpoint(directory)


def epoch_batches(shard: Any, per_worker: int, seed: int) -> Any:
    """One epoch of this worker's shard in numpy batches, shuffled reproducibly (a new ``seed`` per epoch)."""
    return shard.iter_batches(
        batch_size=per_worker,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=4 * per_worker,
        local_shuffle_seed=seed,
    )


def report_epoch(
    metrics: dict[str, Any],
    model: torch.nn.Module,
    spec: JobSpec,
    stage: int,
    epoch: int,
    optimizer: Any,
    schedule: Any,
) -> None:
    """Report an epoch's metrics from every worker; rank 0 attaches the checkpoint (model, spec, optimizer state)."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_checkpoint(
                directory, model, spec, stage, epoch, optimizer=optimizer.state_dict(), scheduler=schedule.state_dict()
            )
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    spec, stage = JobSpec.model_validate(config["spec"]), int(config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.seed + rank)
    rng = np.random.default_rng([spec.seed, rank, stage])
    epochs = spec.train.stage1_epochs if stage == 1 else spec.train.stage2_epochs
    steps = int(config["steps_per_epoch"])
    per_worker = max(2, spec.train.batch_size // world)

    model, tokenizer = build_pe_moe(spec.pe_moe)
    payload = resumed_payload()
    start_epoch = 0 if payload is None else int(payload["epoch"]) + 1
    if payload is not None:
        load_into(model, payload["model"])
    elif config.get("init_checkpoint"):
        load_into(model, read_checkpoint(config["init_checkpoint"])["model"])
    core = model  # the plain module: parameters, scale, checkpoints; ``wrapped`` runs the forward (DDP)
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    params = [p for p in core.parameters() if p.requires_grad]
    lr = spec.train.lr * (spec.train.stage2_lr_scale if stage == 2 else 1.0)
    optimizer = make_optimizer(spec.train, params, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, epochs * steps), spec.train.warmup_ratio)
    )
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
    autocast = device.type == "cuda" and spec.train.mixed_precision
    weights = {"gate_weight": spec.train.gate_weight if core.fusion == "dynamic" and core.num_experts > 1 else 0.0}
    if stage == 2:
        weights |= {
            "contrastive_weight": spec.train.stage2_contrastive_weight,
            "hard_weight": spec.train.stage2_hard_weight,
        }
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, epochs):
        wrapped.train()
        sums: dict[str, float] = {}
        batches = epoch_batches(shard, per_worker, spec.seed * 1000 + stage * 100 + epoch)
        for step, batch in zip(range(steps), batches, strict=False):
            maybe_inject_failure(config, epoch, step)
            ids, mask = tokenize(tokenizer, _texts(batch, spec.train.use_statements, rng), spec.pe_moe.text.max_length)
            negatives = torch.from_numpy(batch["negatives"]).to(device) if stage == 2 else None
            experts = torch.from_numpy(batch["expert"]).to(device)
            buildings = torch.from_numpy(np.unique(batch["building_id"], return_inverse=True)[1]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                images = torch.from_numpy(batch["image"]).to(device)
                out = wrapped(ids.to(device), mask.to(device), images, experts, negatives)
                loss, parts = pe_moe_objective(out, experts, buildings, out["scale"], **weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.train.grad_clip)
            optimizer.step()
            schedule.step()
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics = {
            "stage": stage,
            "epoch": epoch,
            "start_epoch": start_epoch,
            **{k: v / max(1, steps) for k, v in sums.items()},
        }
        report_epoch(metrics, core, spec, stage, epoch, optimizer, schedule)
