"""Expert-homogeneous global batches (the paper trains expert k on its own subset D_k) and the contrastive loss
over every DDP worker's rows: two gloo workers on 127.0.0.1 against one process on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomoe.families.pe_moe.losses import pe_moe_objective
from geomoe.families.pe_moe.model import PEMoEOutput
from geomoe.on_ray.train.grouped import group_schedule, group_steps


def test_each_experts_steps_per_epoch_match_its_subset() -> None:
    """satellite 70 rows, drone 530, ground 400; 2 workers x 8 rows per step: steps = (rows // 2) // 8."""
    rows = {"satellite": 70, "drone": 530, "ground": 400}
    steps = group_steps(rows, workers=2, rows_per_worker_step=8)
    assert steps == {"satellite": 4, "drone": 33, "ground": 25}
    for order in ("proportional", "round_robin"):
        plan = group_schedule(steps, order, seed=3)  # type: ignore[arg-type]
        assert {g: plan.count(g) for g in rows} == steps
        assert plan == group_schedule(steps, order, seed=3)  # every worker derives the same plan
    assert group_schedule(steps, "proportional", seed=3) != group_schedule(steps, "proportional", seed=4)
    rotation = group_schedule(steps, "round_robin", seed=0)
    assert sorted(rotation[:3]) == ["drone", "ground", "satellite"] and len(set(rotation[3:6])) == 3
    # proportional: the small expert's steps spread over the epoch, not bunched at one end
    spread = [i for i, g in enumerate(group_schedule(steps, "proportional", seed=0)) if g == "satellite"]
    assert spread[0] < 31 and spread[-1] > 31


def test_a_per_worker_batch_multiplies_the_step_by_the_workers() -> None:
    from geomoe.families.pe_moe.driver import _steps_per_epoch
    from geomoe.families.pe_moe.spec import PEMoETrainSpec

    rows = {"satellite": 300, "drone": 530, "ground": 400}
    per_step = PEMoETrainSpec(batch_size=32)
    per_gpu = PEMoETrainSpec(batch_size=32, batch_per="worker")
    assert _steps_per_epoch(per_step, 2, 1230, {}) == 1230 // 32
    assert _steps_per_epoch(per_gpu, 2, 1230, {}) == 1230 // 64
    assert _steps_per_epoch(per_step, 2, 1230, rows) == sum((n // 2) // 16 for n in rows.values())
    assert _steps_per_epoch(per_gpu, 2, 1230, rows) == sum((n // 2) // 32 for n in rows.values())


def _outputs(x: torch.Tensor, weights: torch.nn.Linear) -> PEMoEOutput:
    """A stand-in PE-MoE output with gradient into ``weights``: t, v normalised, gate logits, no negatives."""
    t = torch.nn.functional.normalize(weights(x), dim=-1)
    v = torch.nn.functional.normalize(weights(x.flip(-1)), dim=-1)
    return PEMoEOutput(t_shared=x, t=t, v=v, gate_logits=weights(x)[:, :3], v_neg=None, scale=torch.tensor(10.0))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    experts = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1])  # an expert-homogeneous global batch
    buildings = torch.tensor([10, 11, 10, 12, 13, 14, 11, 15])  # shared across the workers' halves
    return x, experts, buildings


def _loss_and_grad(x: torch.Tensor, experts: torch.Tensor, buildings: torch.Tensor) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    weights = torch.nn.Linear(6, 6)
    out = _outputs(x, weights)
    loss, _ = pe_moe_objective(out, experts, buildings, out.scale, gate_weight=0.5)
    loss.backward()
    assert weights.weight.grad is not None
    return float(loss.detach()), weights.weight.grad.clone()


def _worker(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    # a file rendezvous: no port to pick (a free port found now could be another process's by the time it binds)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2)
    x, experts, buildings = _batch()
    half = slice(4 * rank, 4 * rank + 4)
    loss, grad = _loss_and_grad(x[half], experts[half], buildings[half])
    dist.all_reduce(grad)  # what DDP does with every parameter's gradient: the mean over workers
    losses = [torch.zeros(1), torch.zeros(1)]
    dist.all_gather(losses, torch.tensor([loss]))
    torch.save({"loss": torch.cat(losses).mean(), "grad": grad / 2}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_workers_loss_and_gradients_equal_one_process_on_the_concatenated_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker scores its rows against all gathered rows (gradient kept for its own) and averages over its
    rows; DDP's mean of the gradients is then exactly the single-process gradient of the global batch."""
    import torch.multiprocessing as mp

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    single_loss, single_grad = _loss_and_grad(*_batch())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert float(got["loss"]) == pytest.approx(single_loss, rel=1e-5)
        torch.testing.assert_close(got["grad"], single_grad, rtol=1e-5, atol=1e-6)
    # without the gather, each half would see only its own 4 rows as negatives: a different loss
    x, experts, buildings = _batch()
    halves = [_loss_and_grad(x[s], experts[s], buildings[s])[0] for s in (slice(0, 4), slice(4, 8))]
    assert abs(np.mean(halves) - single_loss) > 1e-3
