"""The training engine's arithmetic, without Ray: gradient accumulation equals the full batch, the schedule,
and a stage's loop built from a train section."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geomoe.core.config import TrainSpec
from geomoe.on_ray.train.loop import LoopConfig, TrainingTask, make_optimizer, train_epoch, warmup_cosine


def _fit_one_step(accumulation: int, batch: int, data: dict[str, np.ndarray]) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)

    def step(m: nn.Module, b: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ((m(torch.from_numpy(b["x"])).squeeze(1) - torch.from_numpy(b["y"])) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    loop = LoopConfig(epochs=1, steps_per_epoch=1, batch_size=8, grad_accumulation=accumulation, lr=0.1)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=loop.lr)  # plain SGD: Adam's first step would hide the gradient's size
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    micro = [{k: v[i : i + batch] for k, v in data.items()} for i in range(0, 8, batch)]
    task = TrainingTask(model, step)
    means = train_epoch(task, model, params, optimizer, schedule, iter(micro), loop, 0, torch.device("cpu"))
    assert set(means) == {"loss", "mse"} and means["loss"] == pytest.approx(means["mse"])
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_takes_the_step_of_the_whole_batch() -> None:
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.normal(size=8).astype(np.float32)}
    whole = _fit_one_step(1, 8, data)
    torch.testing.assert_close(_fit_one_step(2, 4, data), whole)  # two micro-batches of 4, one step
    torch.testing.assert_close(_fit_one_step(4, 2, data), whole)
    assert not torch.allclose(_fit_one_step(1, 4, data), whole)  # one micro-batch of 4 alone is another step


def test_warmup_then_cosine_and_the_loop_of_a_stage() -> None:
    factor = warmup_cosine(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5, abs=0.01) and factor(99) < 0.01
    train = TrainSpec(batch_size=16, grad_accumulation=2, lr=1e-3, optimizer="adam")
    loop = LoopConfig.of(train, 7, stage=2, epochs=3, steps_per_epoch=5, lr=1e-4)
    assert (loop.batch_size, loop.grad_accumulation, loop.optimizer, loop.seed) == (16, 2, "adam", 7)
    assert (loop.stage, loop.epochs, loop.lr) == (2, 3, 1e-4)  # the stage's own values win
    # the paper's "8 GPUs with a batch size of 128" read both ways: 128 over all workers, or 128 on each
    assert LoopConfig.of(train, 7, 8, epochs=1, steps_per_epoch=1).batch_size == 16
    per_worker = train.model_copy(update={"batch_per": "worker"})
    assert LoopConfig.of(per_worker, 7, 8, epochs=1, steps_per_epoch=1).batch_size == 16 * 8
    assert isinstance(make_optimizer(loop, [nn.Parameter(torch.zeros(1))]), torch.optim.Adam)
    with pytest.raises(ValueError, match="at"):
        LoopConfig.of(train, 0, epochs=1, steps_per_epoch=1, fail_once_at={"marker": "m"})
