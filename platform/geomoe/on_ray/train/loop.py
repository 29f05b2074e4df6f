"""The one training engine every model family runs on (Ray Train worker side).

``fit(task, loop)`` owns what every family's loop used to repeat: resume from the checkpoint Ray Train hands a
restarted worker group (model, optimizer and scheduler state), initialisation from an earlier stage, DDP
wrapping, AdamW/Adam with warmup + cosine (fused on GPU), bf16 autocast on GPU with the frozen layers held in bf16,
gradient accumulation (without DDP syncs between micro-batches), clipping, per-epoch metric means reduced across
workers, the family's evaluation (in fp32, unless frozen layers are held in bf16), checkpoint reports from rank 0,
and the fault-injection hooks the tests use. A family supplies only a ``TrainingTask``: its model, its step
(batch -> loss and named parts) and optionally its evaluation.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from geomoe.core import registry
from geomoe.core.collectives import mean_across_workers
from geomoe.core.config import JobSpec, Strict, TrainSpec
from geomoe.core.models.checkpoint import load_into, read_checkpoint, save_checkpoint
from geomoe.core.models.precision import hold_frozen_in
from geomoe.on_ray.train.grouped import GroupOrder, dataset_name, group_schedule, group_steps

Batch = dict[str, np.ndarray]
StepFn = Callable[[torch.nn.Module, Batch, torch.device], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[torch.nn.Module, torch.device, int], dict[str, float]]


class FailOnce(Strict):
    """Test hook: kill this worker once at (epoch, step) unless ``marker`` exists (exercises FailureConfig)."""

    at: tuple[int, int]
    marker: str


class LoopConfig(Strict):
    """What one training stage's loop does: built by a family's driver, read by ``fit`` on every worker."""

    stage: int = Field(1, ge=1)
    epochs: int = Field(ge=0)
    steps_per_epoch: int = Field(ge=1, description="optimizer steps per epoch")
    batch_size: int = Field(ge=1, description="global batch of one optimizer step")
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(gt=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float = Field(1.0, gt=0)
    mixed_precision: bool = True
    seed: int = 0
    init_checkpoint: str | None = Field(None, description="start from this checkpoint's weights (not its epoch)")
    find_unused_parameters: bool = Field(True, description="DDP: sparse experts leave parameters without grads")
    group_rows: dict[str, int] = Field(
        default_factory=dict,
        description="group-homogeneous batches (geomoe.on_ray.train.grouped): rows of each group's dataset "
        "train_<group>; empty: one dataset 'train' with mixed batches",
    )
    group_order: GroupOrder = "proportional"
    fail_once_at: FailOnce | None = None
    step_pause_s: float = Field(0.0, ge=0, description="test hook: pause before each step after the first epoch")

    @classmethod
    def of(cls, train: TrainSpec, seed: int, workers: int = 1, **fields: Any) -> LoopConfig:
        """A stage's loop from the job's train section, for ``workers`` training workers; ``fields`` set the
        stage's own values (epochs, ...)."""
        shared = ("grad_accumulation", "lr", "optimizer", "weight_decay", "warmup_ratio", "grad_clip")
        base = {k: getattr(train, k) for k in shared} | {"mixed_precision": train.mixed_precision, "seed": seed}
        base["batch_size"] = train.global_batch(workers)
        return cls.model_validate(base | fields)


@dataclass
class TrainingTask:
    """A family's part of a training stage, built on each worker.

    ``step(model, batch, device)``: forward and loss of one micro-batch (``model`` may be DDP-wrapped);
    returns the loss to minimise and named float parts for the epoch's means.
    ``evaluate(model, device, batch_size)``: per-epoch metrics after training, already reduced across workers
    (runs in eval mode, fp32); None for a family without validation.
    """

    model: torch.nn.Module
    step: StepFn
    evaluate: EvalFn | None = None


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(loop: LoopConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or AdamW (decoupled weight decay) as the loop says."""
    kind = torch.optim.AdamW if loop.optimizer == "adamw" else torch.optim.Adam
    # foreach: one multi-tensor update instead of a Python loop over parameters (torch picks it only on CUDA);
    # measured on the demo's tiny PE-MoE (274 trainable tensors) on CPU: the step 111.7 -> 102.7 ms. On a GPU the
    # fused kernel: one launch for every tensor's whole update, not several per group of tensors. The CPU keeps
    # foreach, though fused is faster there too (bench pe_moe_step: the update 3.4x faster): its rounding differs
    # in the last bits, and the stored runs and calibrations replay bit for bit on CPU
    fused = bool(params) and params[0].is_cuda
    return kind(params, lr=loop.lr, weight_decay=loop.weight_decay, foreach=not fused, fused=fused)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for every family: validate, ask the family for its task, fit."""
    import ray.train

    spec = JobSpec.model_validate(config["spec"])
    loop = LoopConfig.model_validate(config["loop"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(loop.seed + rank)
    task = registry.family(spec.model.name).training_task(spec, loop, rank)
    epochs = epoch_logger(config.get("tracking"), loop)
    fit(task, loop, spec, epochs)
    epochs.end_run()


def epoch_logger(tracking: dict[str, str] | None, loop: LoopConfig) -> Any:
    """On rank 0 of a tracked job, the MLflow module with this stage's child run open (Ray's ``setup_mlflow``);
    elsewhere a no-op with the same methods."""
    if not tracking:
        return _NoLog()
    from ray.air.integrations.mlflow import setup_mlflow

    tags = {
        "mlflow.parentRunId": tracking["run_id"],
        "geomoe.model": tracking["model"],
        "geomoe.stage": str(loop.stage),
    }
    return setup_mlflow(
        {"stage": loop.stage, "epochs": loop.epochs, "lr": loop.lr},
        tracking_uri=tracking["uri"],
        experiment_id=tracking["experiment_id"],
        run_name=f"{tracking['model']} stage{loop.stage}",
        tags=tags,
        rank_zero_only=True,
    )


class _NoLog:
    def log_metrics(self, *_: Any, **__: Any) -> None:
        pass

    def end_run(self) -> None:
        pass


def fit(task: TrainingTask, loop: LoopConfig, spec: JobSpec, epochs: Any = None) -> None:
    """Train ``task.model`` for the loop's epochs on the "train" dataset shard, reporting every epoch (and, with
    an ``epochs`` logger, logging it)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    micro = max(1, loop.batch_size // (ctx.get_world_size() * loop.grad_accumulation))
    core, payload = task.model, _resumed_payload()
    start_epoch = 0 if payload is None else int(payload["epoch"]) + 1
    if payload is not None:
        load_into(core, payload["model"])
    elif loop.init_checkpoint:
        load_into(core, read_checkpoint(loop.init_checkpoint)["model"])
    kwargs = {"find_unused_parameters": loop.find_unused_parameters}
    wrapped = ray.train.torch.prepare_model(core, parallel_strategy_kwargs=kwargs)
    device = ray.train.torch.get_device()
    frozen_in_bf16 = hold_frozen_for(core, loop, device) > 0
    params, optimizer, schedule = optimization(core, loop)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
    for epoch in range(start_epoch, loop.epochs):
        wrapped.train()
        seed = loop.seed * 1000 + loop.stage * 100 + epoch
        batches = _grouped_batches(loop, micro, seed) if loop.group_rows else _batches(_shard("train"), micro, seed)
        means = train_epoch(task, wrapped, params, optimizer, schedule, batches, loop, epoch, device)
        metrics: dict[str, Any] = {"stage": loop.stage, "epoch": epoch, "start_epoch": start_epoch, **means}
        if task.evaluate is not None:
            wrapped.eval()
            # fp32, unless frozen layers sit in bf16: then under autocast, as the steps
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=frozen_in_bf16):
                metrics |= task.evaluate(wrapped, device, micro)
        _report(metrics, core, spec, loop.stage, epoch, optimizer, schedule)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "stage"}
        (epochs or _NoLog()).log_metrics(numbers, step=epoch)


def optimization(core: torch.nn.Module, loop: LoopConfig) -> tuple[list[torch.nn.Parameter], Any, Any]:
    """The trainable parameters of ``core``, their optimizer and its warm-up + cosine schedule over the stage."""
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = make_optimizer(loop, params)
    total = max(1, loop.epochs * loop.steps_per_epoch)
    return params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, loop.warmup_ratio))


# Where ``mixed_precision`` turns bf16 autocast on. CPU autocast exists but is slower than fp32 on most CPUs; a test
# adds "cpu" to run the GPU's precision path (every family's step under bf16) on a machine without one.
AUTOCAST_DEVICES: tuple[str, ...] = ("cuda",)


def autocast_on(loop: LoopConfig, device: torch.device) -> bool:
    return loop.mixed_precision and device.type in AUTOCAST_DEVICES


def hold_frozen_for(model: torch.nn.Module, loop: LoopConfig, device: torch.device) -> int:
    """When ``model``'s steps on ``device`` run under bf16 autocast, its frozen layers held in bf16 from now on
    (``hold_frozen_in``: no cast of them per step; every forward then runs under autocast); how many parameters."""
    return hold_frozen_in(model, torch.bfloat16) if autocast_on(loop, device) else 0


def train_epoch(
    task: TrainingTask,
    wrapped: torch.nn.Module,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    batches: Iterator[Batch],
    loop: LoopConfig,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One epoch of optimizer steps, each over ``grad_accumulation`` micro-batches; the parts' means (across
    workers when a process group is up). No Ray here: the learning tests run it in one process."""
    autocast = autocast_on(loop, device)
    sums: dict[str, float] = {}
    micro_steps = 0
    for step in range(loop.steps_per_epoch):
        _inject_faults(loop, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        micro = [batch for _, batch in zip(range(loop.grad_accumulation), batches, strict=False)]
        if not micro:  # this worker's shard ran out (uneven shards): the epoch ends here
            break
        for k, batch in enumerate(micro):
            # DDP all-reduces gradients on every backward; only the step's last micro-batch needs it
            no_sync = getattr(wrapped, "no_sync", None) if k < len(micro) - 1 else None
            with no_sync() if no_sync else nullcontext(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                loss, parts = task.step(wrapped, batch, device)
                (loss / len(micro)).backward()
            micro_steps += 1
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
        torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
        optimizer.step()
        schedule.step()
    return mean_across_workers(sums, micro_steps)


def _shard(name: str) -> Any:
    import ray.train

    return ray.train.get_dataset_shard(name)


def _grouped_batches(loop: LoopConfig, micro: int, seed: int) -> Iterator[Batch]:
    """One epoch of micro-batches in the plan every worker shares: each optimizer step's ``grad_accumulation``
    micro-batches come from the scheduled group's dataset shard."""
    import ray.train

    workers = ray.train.get_context().get_world_size()
    steps = group_steps(loop.group_rows, workers, micro * loop.grad_accumulation)
    shards = {g: _batches(_shard(dataset_name(g)), micro, seed + i) for i, g in enumerate(sorted(loop.group_rows))}
    for group in group_schedule(steps, loop.group_order, seed):
        for _ in range(loop.grad_accumulation):
            yield next(shards[group])


def _batches(shard: Any, micro: int, seed: int) -> Iterator[Batch]:
    """One epoch of this worker's shard in numpy micro-batches, shuffled reproducibly (a new seed per epoch)."""
    return iter(
        shard.iter_batches(
            batch_size=micro,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * micro,
            local_shuffle_seed=seed,
        )
    )


def _inject_faults(loop: LoopConfig, epoch: int, step: int) -> None:
    """Test hooks: pause before each step of a later epoch (a test takes a node away meanwhile), or kill this
    worker process once at (epoch, step) to exercise FailureConfig recovery."""
    if epoch > 0 and loop.step_pause_s:
        time.sleep(loop.step_pause_s)
    fail = loop.fail_once_at
    if fail and (epoch, step) == tuple(fail.at) and not Path(fail.marker).exists():
        Path(fail.marker).write_text("killed")
        os._exit(1)


def _resumed_payload() -> dict[str, Any] | None:
    """The checkpoint Ray Train hands a restarted (or rerun) worker group, read; None on a fresh start."""
    import ray.train

    resumed = ray.train.get_checkpoint()
    if resumed is None:
        return None
    with resumed.as_directory() as directory:
        return read_checkpoint(directory)


def _report(
    metrics: dict[str, Any],
    model: torch.nn.Module,
    spec: JobSpec,
    stage: int,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
) -> None:
    """Report an epoch's metrics from every worker; rank 0 attaches the checkpoint (model, spec, optimizer state)."""
    import ray.train
    from ray.train import Checkpoint

    from geomoe.on_ray.ray_env import tick_progress

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_checkpoint(
                directory, model, spec, stage, epoch, optimizer=optimizer.state_dict(), scheduler=schedule.state_dict()
            )
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)
    if ray.train.get_context().get_world_rank() == 0:
        tick_progress()
