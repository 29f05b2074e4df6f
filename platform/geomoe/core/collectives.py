"""Every torch.distributed collective geomoe makes goes through here (a rule test says so).

A process group reduces tensors only on the devices its backends serve: NCCL takes CUDA tensors only, gloo CPU
(and CUDA) ones. Per-epoch sums and validation counts are naturally built on the CPU, so the first GPU run died in
NCCL ("No backend type associated with device type cpu"). Each helper here moves its tensor to the group's device
for the collective and hands the result back on the tensor's own device; outside torch.distributed (one process,
tests) it is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a default process group exists (a Ray Train worker under DDP)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def served_device_types() -> list[str]:
    """Device types the default group's backends serve, in its configured order: ``"cpu:gloo,cuda:nccl"`` ->
    ``["cpu", "cuda"]``; ``"cuda:nccl"`` -> ``["cuda"]``."""
    return [entry.split(":")[0] for entry in str(dist.get_backend_config()).split(",") if ":" in entry]


def group_device(like: torch.Tensor) -> torch.device:
    """Where the group reduces ``like``: its own device if the group serves that type, else the group's first
    device type (CUDA: this process's current device, which Ray Train sets per worker)."""
    served = served_device_types()
    if like.device.type in served:
        return like.device
    if not served:
        raise RuntimeError(f"the process group serves no device ({dist.get_backend_config()!r})")
    if served[0] == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(served[0])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all workers, on ``tensor``'s device (a new tensor)."""
    if not active():
        return tensor
    on_group = tensor.detach().to(group_device(tensor), copy=True)
    dist.all_reduce(on_group)
    return on_group.to(tensor.device)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every worker's ``tensor`` (equal shapes) concatenated along dim 0 in rank order, on ``tensor``'s device;
    no gradient flows through it (``gather_rows`` below adds the backward)."""
    if not active():
        return tensor
    on_group = tensor.detach().to(group_device(tensor)).contiguous()
    parts = [torch.empty_like(on_group) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, on_group)
    return torch.cat(parts).to(tensor.device)


def mean_across_workers(sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-name means over every worker's items: ``sums`` of named values over this worker's ``count`` items
    (one all-reduce in float64; every worker gets the same numbers)."""
    names = sorted(sums)
    totals = all_reduce_sum(torch.tensor([sums[n] for n in names] + [float(count)], dtype=torch.float64))
    n = max(1.0, float(totals[-1]))
    return {name: float(totals[i]) / n for i, name in enumerate(names)}


class _GatherRows(torch.autograd.Function):
    """All workers' rows in rank order; the backward sums every worker's gradient of the whole gathered tensor
    (one all-reduce, which gloo has too) and keeps this worker's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], rank()
        return all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = all_reduce_sum(grad.contiguous())
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every DDP worker's rows of ``x`` (equal row counts), concatenated in rank order, with gradient into each
    worker's own rows (open_clip's gather-with-grad); ``x`` itself outside torch.distributed.

    A loss that averages over this worker's rows against the gathered ones, averaged by DDP over the workers,
    has exactly the gradient of the same loss on the concatenated global batch in one process."""
    if world_size() == 1:
        return x
    if x.requires_grad:
        gathered: torch.Tensor = _GatherRows.apply(x)
        return gathered
    return all_gather_cat(x)
