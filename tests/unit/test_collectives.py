"""Collectives run on the process group's device (NCCL takes CUDA tensors only), and only through
geomoe.core.collectives.

No CPU machine has CUDA, so the NCCL rule is played by a process group whose backend serves only PyTorch's lazy
device (a real device with real data, executed on the CPU by TorchScript) and refuses any tensor off it, as NCCL
refuses CPU tensors. The engine's per-epoch reductions and SMGeo's validation sums crashed that way on the first
GPU run; under this group the old code raises and the new code reduces on the group's device.
"""

from __future__ import annotations

import ast
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from geomoe.core import collectives
from geomoe.core.collectives import gather_rows
from geomoe.on_ray.train.loop import LoopConfig, TrainingTask, train_epoch

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "geomoe"
COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast", "broadcast_object_list",
    "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter",
    "gather_object", "scatter_object_list", "barrier", "send", "recv", "isend", "irecv",
}  # fmt: skip


class _Done(dist.Work):
    def __init__(self, result: list[torch.Tensor]) -> None:
        super().__init__()
        self.future: torch.futures.Future[Any] = torch.futures.Future()
        self.future.set_result(result)

    def wait(self, timeout: Any = None) -> bool:
        return True

    def get_future(self) -> torch.futures.Future[Any]:
        return self.future


class LazyOnlyGroup(dist.ProcessGroup):
    """A world of one whose collectives take lazy-device tensors only (as NCCL takes CUDA tensors only)."""

    devices_seen: list[str] = []

    def _take(self, tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            if tensor.device.type != "lazy":
                raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
            self.devices_seen.append(tensor.device.type)

    def allreduce(self, tensors: list[torch.Tensor], opts: Any) -> dist.Work:
        self._take(tensors)
        return _Done(tensors)  # one worker: the sum is the tensor itself

    def allgather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any) -> dist.Work:
        self._take(inputs)
        outputs[0][0].copy_(inputs[0])
        return _Done(outputs[0])

    def getBackendName(self) -> str:
        return "lazyonly"


@functools.cache
def _lazy_device() -> None:
    """PyTorch's lazy device, executed by TorchScript on the CPU (initialised once per process)."""
    import torch._lazy.ts_backend

    torch._lazy.ts_backend.init()


@pytest.fixture
def lazy_only_group() -> Iterator[None]:
    _lazy_device()
    if "lazyonly" not in dist.Backend.backend_list:
        dist.Backend.register_backend(
            "lazyonly", lambda store, rank, size, timeout: LazyOnlyGroup(rank, size), devices=["lazy"]
        )
    LazyOnlyGroup.devices_seen.clear()
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("lazyonly", init_method=f"file://{folder}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_the_engines_epoch_means_reduce_on_the_groups_device(lazy_only_group: None) -> None:
    with pytest.raises(RuntimeError, match="device type cpu"):
        dist.all_reduce(torch.ones(2))  # what the engine did with its CPU sums: refused, as NCCL refused them
    model = nn.Linear(2, 1)

    def step(m: nn.Module, batch: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        loss = m(torch.from_numpy(batch["x"])).pow(2).mean()
        return loss, {"doubled": 2 * float(loss.detach())}

    loop = LoopConfig(epochs=1, steps_per_epoch=3, batch_size=4, lr=0.1)
    batches = iter([{"x": np.full((4, 2), i, dtype=np.float32)} for i in range(3)])
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=loop.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    means = train_epoch(
        TrainingTask(model, step), model, params, optimizer, schedule, batches, loop, 0, torch.device("cpu")
    )
    assert means["doubled"] == pytest.approx(2 * means["loss"]) and means["loss"] > 0
    assert LazyOnlyGroup.devices_seen == ["lazy"]  # one all-reduce, on the group's device


def test_sums_and_gathers_come_back_on_the_tensors_device(lazy_only_group: None) -> None:
    values = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    summed = collectives.all_reduce_sum(values)
    assert summed.device.type == "cpu" and torch.equal(summed, values) and summed is not values
    gathered = collectives.all_gather_cat(values.float())
    assert gathered.device.type == "cpu" and torch.equal(gathered, values.float())
    assert collectives.served_device_types() == ["lazy"] and LazyOnlyGroup.devices_seen == ["lazy", "lazy"]


def _two_workers(rank: int, folder: str, results: Any) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        means = collectives.mean_across_workers({"loss": 1.0 + rank * 5.0}, count=1 + rank)  # 1 item, then 2
        x = torch.full((2, 3), float(rank), requires_grad=True)
        everyone = gather_rows(x)
        (everyone * torch.arange(4.0)[:, None]).sum().backward()  # row r of the whole batch weighted by r
        assert x.grad is not None
        results.put((rank, means["loss"], everyone.detach().tolist(), x.grad[:, 0].tolist()))
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_get_the_means_of_all_items_and_gather_with_gradient() -> None:
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as folder:
        workers = [context.Process(target=_two_workers, args=(r, folder, results)) for r in (0, 1)]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(120)
        finally:
            for worker in workers:
                if worker.is_alive():  # a hung collective: never leave it behind
                    worker.kill()
                    worker.join()
        assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    got = sorted(results.get() for _ in workers)
    for rank, loss, everyone, grad in got:
        assert loss == pytest.approx((1.0 + 6.0) / 3)  # sums 1 + 6 over 1 + 2 items
        assert everyone == [[0.0] * 3] * 2 + [[1.0] * 3] * 2  # rank order
        assert grad == [2.0 * r for r in (2 * rank, 2 * rank + 1)]  # both workers' gradients of own rows, summed


def _distributed_names(tree: ast.AST) -> set[str]:
    """Names this module binds to torch.distributed (``import torch.distributed as dist``, ``from torch import
    distributed``), plus the dotted spelling."""
    names = {"torch.distributed"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            names |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    return names


def _collective_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines that name a torch.distributed collective: through any name bound to torch.distributed (or a module
    under it), or imported from it."""
    distributed = _distributed_names(tree)
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
            calls += [(node.lineno, a.name) for a in node.names if a.name in COLLECTIVES]
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES:
            owner = ast.unparse(node.value)
            if any(owner == name or owner.startswith(f"{name}.") for name in distributed):
                calls.append((node.lineno, f"{owner}.{node.attr}"))
    return sorted(calls)


def test_no_collective_is_called_outside_geomoe_collectives() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line} {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "collectives.py"
        for line, name in _collective_calls(ast.parse(path.read_text()))
    ]
    assert not found, "route these through geomoe.core.collectives:\n" + "\n".join(found)
    spellings = """
import torch
import torch.distributed as td
from torch import distributed
from torch.distributed.nn.functional import all_gather
torch.distributed.all_reduce(t)
td.barrier()
distributed.broadcast(t, 0)
torch.distributed.nn.functional.all_reduce(t)
torch.gather(t, 0, i)
"""
    assert _collective_calls(ast.parse(spellings)) == [
        (5, "all_gather"),
        (6, "torch.distributed.all_reduce"),
        (7, "td.barrier"),
        (8, "distributed.broadcast"),
        (9, "torch.distributed.nn.functional.all_reduce"),
    ]  # every spelling is seen; torch.gather is not a collective
