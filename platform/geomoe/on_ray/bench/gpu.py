"""``make gpu-check`` (``geomoe bench gpu``): the real-size numbers that only a GPU can give, in one JSON.

Each family measures its own parts (the ``geomoe.gpu_checks`` entry points: ``name -> "module:function"``, a
function of ``(tiny, device)`` returning its reports and a summary line): PE-MoE's training step at the paper's
size and the Serve query encoder's throughput (geomoe.families.pe_moe.bench_gpu), SMGeo's training step at 1024 px
(geomoe.families.smgeo.bench_gpu). Shared here: exact search over 1M x 3 x 1024 bf16 rows resident on the GPU
(geomoe.core.retrieval.search), 1 and 32 queries, as a fraction of the HBM bandwidth a large device-to-device copy
reaches in the same run; and the harness every part uses (a timed median, a training step's samples/s, peak memory
and MFU: FLOPs counted by torch's FlopCounterMode over the GPU's dense bf16 peak).

Without a CUDA device it prints one line and exits 0. ``tiny=True`` runs every part at toy sizes on any device (the
unit test runs it on CPU, so the code a GPU machine runs is the code the tests run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch

from geomoe.core.errors import GeomoeError
from geomoe.core.retrieval.search import exact_search

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), TFLOP/s; MFU is reported only for these.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
NO_GPU = "gpu-check: no CUDA device on this machine; nothing measured (run `make gpu-check` on a GPU machine)"
ENTRY_POINT_GROUP = "geomoe.gpu_checks"


@dataclass(frozen=True)
class SearchSizes:
    gallery: int
    row_dim: int


REAL_SEARCH = SearchSizes(gallery=1_000_000, row_dim=3 * 1024)
TINY_SEARCH = SearchSizes(gallery=5_000, row_dim=96)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def train_step_report(
    model: torch.nn.Module, step: Callable[[], torch.Tensor], batch: int, device: torch.device, repeats: int
) -> dict[str, Any]:
    """samples/s, peak memory and MFU of ``step`` (forward + backward + AdamW update on the trainable parameters)."""
    from torch.utils.flop_counter import FlopCounterMode

    from geomoe.core.models.precision import DispatchCount, frozen_parameters, hold_frozen_in

    cuda = device.type == "cuda"
    frozen = frozen_parameters(model)
    if cuda:  # as the training engine runs a step under autocast: frozen layers held in bf16, fused AdamW
        hold_frozen_in(model, torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, foreach=not cuda, fused=cuda)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step()
        loss.backward()
        optimizer.step()

    train_step()  # the warm-up, which also makes the optimizer's state
    with FlopCounterMode(display=False) as counter, DispatchCount(frozen_parameters(model)) as dispatch:
        train_step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(train_step, device, repeats)
    peak = peak_tflops(device)
    achieved = flops / seconds / 1e12
    return {
        "batch": batch,
        "s_per_step": round(seconds, 4),
        "samples_per_s": round(batch / seconds, 1),
        "flop_per_step": int(flops),
        "achieved_tflops": float(f"{achieved:.4g}"),
        "mfu": None if peak is None else round(achieved / peak, 3),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "trainable_M": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
        "frozen_M": round(sum(p.numel() for p in frozen) / 1e6, 1),
        "aten_ops_per_step": dispatch.ops,  # about the kernels a GPU launches
        "frozen_cast_MiB_per_step": round(dispatch.cast_bytes / 2**20, 1),  # goal 0
    }


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s read + written by a large device-to-device copy (median of 5)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 5)
    return 2 * nbytes / seconds / 1e9


def gpu_search(sizes: SearchSizes, device: torch.device) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(0)
    dim = sizes.row_dim
    rows = torch.empty(sizes.gallery, dim, dtype=torch.bfloat16, device=device)
    for start in range(0, sizes.gallery, 100_000):  # unit rows, made in slices (no float32 copy of the whole)
        part = torch.randn(min(100_000, sizes.gallery - start), dim, device=device, generator=generator)
        rows[start : start + len(part)] = torch.nn.functional.normalize(part, dim=1).to(torch.bfloat16)
    bandwidth = copy_bandwidth(device, min(4 << 30, 2 * rows.numel() * rows.element_size()))
    out: dict[str, Any] = {
        "rows": sizes.gallery,
        "dim": dim,
        "dtype": "bfloat16",
        "copy_bandwidth_GBps": round(bandwidth),
    }
    gb = rows.numel() * rows.element_size() / 1e9
    for q in (1, 32):
        queries = torch.randn(q, dim, generator=generator, device=device).cpu().numpy()

        def search(queries: np.ndarray = queries) -> None:
            exact_search(rows, queries, 10)

        seconds = timed(search, device, 10)
        out[f"q{q}"] = {"ms": round(1000 * seconds, 2), "bandwidth_fraction": round(gb / seconds / bandwidth, 2)}
    return out


def gpu_check(tiny: bool = False, device: str | None = None) -> dict[str, Any]:
    """Every family's parts, then the search, on ``device`` (default: the first GPU); without one (and not
    ``tiny``), one line saying so."""
    if device is None and not torch.cuda.is_available():
        return {"benchmark": "gpu", "gpu": None, "summary": NO_GPU}
    where = torch.device(device or "cuda")
    torch.manual_seed(0)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "gpu": torch.cuda.get_device_name(where) if where.type == "cuda" else None,
        "device": str(where),
        "sizes": "tiny" if tiny else "real",
        "peak_bf16_tflops": peak_tflops(where),
        "torch": torch.__version__,
    }
    parts, points = [], sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name)
    if not points:  # the package's metadata predates the entry points: the families' parts would silently vanish
        raise GeomoeError(f"no {ENTRY_POINT_GROUP} entry points installed; reinstall geomoe (pip install -e .)")
    for point in points:
        reports, line = point.load()(tiny, where)
        result |= reports
        parts.append(line)
        release(where)  # each part's memory goes before the next one's
    search = result["exact_search"] = gpu_search(TINY_SEARCH if tiny else REAL_SEARCH, where)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["summary"] = (
        f"gpu-check on {result['gpu'] or where} ({result['sizes']} sizes, {result['seconds']} s): "
        + "; ".join(parts)
        + f"; search {search['rows']:,} rows {search['q1']['ms']} ms / 32 queries {search['q32']['ms']} ms "
        f"({search['q1']['bandwidth_fraction']:.0%} of copy bandwidth)"
    )
    return result
