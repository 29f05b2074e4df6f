"""``geomoe bench pe_moe_step`` and ``geomoe bench mining``.

pe_moe_step: training samples/s of PE-MoE with K=3 experts on one shared trunk (trunk once per batch)
against a naive ensemble of three independent full encoders (each runs its own whole backbone), same batch; and
the CPU proxies of the GPU goals (``dispatch_proxies``, ``flop_ratio``).
mining: time and peak memory of chunked hard-negative mining against scoring the full query x gallery matrix.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomoe.core.models.precision import dispatched, frozen_parameters, hold_frozen_in
from geomoe.core.retrieval.mining import mine_hard_negatives
from geomoe.families.pe_moe.factory import build_pe_moe, ensure_tiny_models, tokenize
from geomoe.families.pe_moe.losses import pe_moe_objective
from geomoe.families.pe_moe.model import PEMoE
from geomoe.families.pe_moe.spec import ImageEncoderSpec, PEMoEModelSpec, TextEncoderSpec, TinyModelsSpec
from geomoe.on_ray.bench import options

CORPUS = [
    f"a {c} roof beside a {k} with {n} trees"
    for c in ("red", "blue", "green")
    for k in ("pond", "court")
    for n in range(9)
]


def _tiny_spec(work: Path, image_size: int, text_layers: int) -> PEMoEModelSpec:
    return PEMoEModelSpec(
        embed_dim=64,
        gate_hidden=64,
        text=TextEncoderSpec(source=str(work / f"text{text_layers}"), tail_layers=2, max_length=32),
        image=ImageEncoderSpec(
            name="geomoe-eva02-micro", pretrained=str(work / "image.pt"), image_size=image_size, tail_blocks=2
        ),
        tiny=TinyModelsSpec(text_hidden=64, text_layers=text_layers, text_heads=2),
    )


def _loss(model: PEMoE, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor, expert: torch.Tensor) -> Any:
    """The training loss of one batch, each row its own building (scale 14, as the benchmarks' steps use)."""
    out = model(ids, mask, images, expert)
    return pe_moe_objective(out, expert, torch.arange(len(ids)), torch.tensor(14.0), 1.0)[0]


def _step_time(
    models: list[PEMoE], ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor, steps: int, routed: bool
) -> float:
    """Seconds per training step summed over ``models`` (one model = PE-MoE; three = the naive ensemble).

    PE-MoE routes each row to its platform's expert. A naive ensemble member sees the whole batch, or with
    ``routed`` only the rows of its own platform.
    """
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    expert = torch.arange(len(ids)) % 3
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()  # the first step warms up allocators and kernels
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for k, m in enumerate(models):
            rows = torch.arange(len(ids)) if m.num_experts > 1 or not routed else (expert == k).nonzero()[:, 0]
            own = expert[rows] if m.num_experts > 1 else torch.zeros(len(rows), dtype=torch.long)
            loss = loss + _loss(m, ids[rows], mask[rows], images[rows], own)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def _optimizer_ms(params: list[torch.nn.Parameter], fused: bool, steps: int = 20) -> float:
    """Median milliseconds of one AdamW update of ``params`` (foreach or fused; their gradients as they are)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=not fused, fused=fused)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times[1:]))


def dispatch_proxies(
    spec: PEMoEModelSpec, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor
) -> dict[str, Any]:
    """The GPU goals' CPU proxies for one PE-MoE training step (issue 38), each way measured here: aten ops per step
    (forward + backward + AdamW; on a GPU about one kernel each) with AdamW's foreach and fused updates and the
    update's time; and under bf16 autocast (the GPU's precision) the MiB of frozen weights cast per step, as autocast
    casts them at every use and with the frozen layers held in bf16 (``hold_frozen_in``, what training does)."""
    torch.manual_seed(0)
    model = build_pe_moe(spec)[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    expert = torch.arange(len(ids)) % 3

    def step(autocast: bool, fused: bool = False) -> Any:
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=not fused, fused=fused)

        def one() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = _loss(model, ids, mask, images, expert)
            loss.backward()
            optimizer.step()

        one()  # the optimizer's state is made in its first step: count a step after it
        return one

    frozen = frozen_parameters(model)
    ways = {"foreach": False, "fused": True}
    ops = {name: dispatched(step(False, fused), frozen).ops for name, fused in ways.items()}
    update_ms = {name: round(_optimizer_ms(trainable, fused), 2) for name, fused in ways.items()}
    casting = dispatched(step(True), frozen)
    hold_frozen_in(model, torch.bfloat16)
    holding = dispatched(step(True), frozen_parameters(model))
    return {
        "trainable_tensors": len(trainable),
        "aten_ops_per_step": ops | {"ratio": round(ops["foreach"] / ops["fused"], 2)},
        "adamw_update_ms": update_ms | {"ratio": round(update_ms["foreach"] / update_ms["fused"], 2)},
        "bf16_frozen_cast_MiB_per_step": {
            "cast_at_each_use": round(casting.cast_bytes / 2**20, 3),
            "held_in_bf16": round(holding.cast_bytes / 2**20, 3),
        },
        "bf16_aten_ops_per_step": {"cast_at_each_use": casting.ops, "held_in_bf16": holding.ops},
    }


def step_flops(model: PEMoE, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor, expert: torch.Tensor) -> int:
    """FLOPs of one forward and backward (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _loss(model, ids, mask, images, expert).backward()
    return int(counter.get_total_flops())


def flop_ratio(spec: PEMoEModelSpec, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> dict[str, Any]:
    """Executed over needed FLOPs of a step: the K-expert model with each row routed to its platform's expert,
    over one expert taking every row (the trunks once, one tail per row: what the loss needs). Near 1 unless the
    routing runs experts on rows not theirs."""
    torch.manual_seed(0)
    routed = step_flops(build_pe_moe(spec)[0], ids, mask, images, torch.arange(len(ids)) % 3)
    one = spec.model_copy(update={"experts": spec.experts[:1], "fusion": "unified"})
    needed = step_flops(build_pe_moe(one)[0], ids, mask, images, torch.zeros(len(ids), dtype=torch.long))
    return {"executed_GFLOP": round(routed / 1e9, 3), "needed_GFLOP": round(needed / 1e9, 3),
            "ratio": round(routed / needed, 3)}  # fmt: skip


def _proxy_line(p: dict[str, Any]) -> str:
    ops, update, cast = p["aten_ops_per_step"], p["adamw_update_ms"], p["bf16_frozen_cast_MiB_per_step"]
    return (
        f"aten ops per step {ops['foreach']} with AdamW foreach, {ops['fused']} fused ({ops['ratio']}x); the update "
        f"{update['foreach']} vs {update['fused']} ms ({update['ratio']}x); under bf16 autocast frozen weights cast "
        f"per step {cast['cast_at_each_use']} MiB, held in bf16 {cast['held_in_bf16']} MiB; executed / needed FLOPs "
        f"{p['flops_per_step']['ratio']}"
    )


def bench_pe_moe_step(
    out: Path, batch: int = 32, steps: int = 5, image_size: int = 64, text_layers: int = 4
) -> dict[str, Any]:
    """``text_layers`` sets how much of the tiny text model is frozen trunk (the tail is always 2 layers)."""
    work = out / "tiny_models"
    spec = _tiny_spec(work, image_size, text_layers)
    ensure_tiny_models(spec, CORPUS)
    shared, tokenizer = build_pe_moe(spec)
    # the naive ensemble: three single-expert models, each with its own full backbone run per batch
    single = spec.model_copy(update={"experts": spec.experts[:1], "fusion": "unified"})
    naive = [build_pe_moe(single)[0] for _ in range(3)]
    ids, mask = tokenize(tokenizer, (CORPUS * 4)[:batch], spec.text.max_length)
    images = torch.randn(batch, 3, image_size, image_size)
    proxies = dispatch_proxies(spec, ids, mask, images) | {"flops_per_step": flop_ratio(spec, ids, mask, images)}
    shared_s = _step_time([shared], ids, mask, images, steps, routed=True)
    naive_s = _step_time(naive, ids, mask, images, steps, routed=False)
    routed_s = _step_time(naive, ids, mask, images, steps, routed=True)
    return {
        "benchmark": "pe_moe_step",
        "batch": batch,
        "text_layers": text_layers,
        "image_size": image_size,
        "experts": 3,
        "device": "cpu",
        "shared_trunk": {"s_per_step": round(shared_s, 4), "samples_per_s": round(batch / shared_s, 1)},
        "naive_ensemble": {"s_per_step": round(naive_s, 4), "samples_per_s": round(batch / naive_s, 1)},
        "naive_ensemble_routed": {"s_per_step": round(routed_s, 4), "samples_per_s": round(batch / routed_s, 1)},
        "speedup": round(naive_s / shared_s, 2),
        "speedup_vs_routed": round(routed_s / shared_s, 2),
        "gpu_proxies": proxies,
        "summary": f"pe_moe_step (tiny models, {text_layers} text layers, batch {batch}, CPU): "
        f"shared trunk + routed experts {batch / shared_s:.1f} samples/s; 3 independent encoders on the whole "
        f"batch {batch / naive_s:.1f} samples/s ({naive_s / shared_s:.2f}x), each on its own platform's rows "
        f"{batch / routed_s:.1f} samples/s ({routed_s / shared_s:.2f}x); " + _proxy_line(proxies),
    }


def _measure(fn: Any) -> tuple[float, float]:
    """(seconds, peak MiB of NumPy allocations) of ``fn()``."""
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def _full_matrix_mining(queries: np.ndarray, qg: np.ndarray, gallery: np.ndarray, gg: np.ndarray, m: int) -> np.ndarray:
    scores = queries @ gallery.T
    scores[qg[:, None] == gg[None, :]] = -np.inf
    return np.argsort(-scores, axis=1)[:, :m]


def bench_mining(
    queries: int = 2000, dim: int = 1024, sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    qg = rng.integers(0, 500, size=queries)
    rows = []
    for n in sizes:
        g = rng.standard_normal((n, dim), dtype=np.float32)
        gg = rng.integers(0, 500, size=n)
        chunked_s, chunked_mb = _measure(partial(mine_hard_negatives, q, qg, g, gg, per_query=4, chunk=256))
        full_s, full_mb = _measure(partial(_full_matrix_mining, q, qg, g, gg, 4))
        rows.append(
            {
                "gallery": n,
                "chunked_s": round(chunked_s, 2),
                "chunked_peak_mib": round(chunked_mb, 1),
                "full_matrix_s": round(full_s, 2),
                "full_matrix_peak_mib": round(full_mb, 1),
            }
        )
    last = rows[-1]
    return {
        "benchmark": "mining",
        "queries": queries,
        "dim": dim,
        "chunk": 256,
        "per_query": 4,
        "rows": rows,
        "summary": f"mining {queries} queries x {last['gallery']} gallery (d={dim}): chunked {last['chunked_s']} s / "
        f"{last['chunked_peak_mib']} MiB peak, "
        f"full matrix {last['full_matrix_s']} s / {last['full_matrix_peak_mib']} MiB",
    }


def run_step(out: str, overrides: list[str]) -> dict[str, Any]:
    return bench_pe_moe_step(Path(out), text_layers=int(options(overrides).get("text_layers", 4)))


def run_mining(out: str, overrides: list[str]) -> dict[str, Any]:
    return bench_mining()
