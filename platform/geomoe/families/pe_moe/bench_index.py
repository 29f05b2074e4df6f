"""``geomoe bench index``: exact PE-MoE gallery search (geomoe.core.retrieval.search) against the plain ways, in one run
over the same rows (3 experts x 1024-d unit vectors, 20 views around each building centre; queries are noisy
copies of gallery rows with random gates), at 1 and 32 queries per call:

- ours on bf16 rows and on fp16 rows (the stored dtype picks the kernel; float32 products, exact), given the rows'
  largest norm as an index's manifest records it (one query: the native first pass with exact rescoring);
- a plain torch bf16 matmul + topk over the same bf16 rows (bf16 products: what the fast path must match);
- FAISS IndexFlatIP over the rows widened to float32 (exact; the results must be identical to ours);
- ours on int8 rows with an exact rescored shortlist: speed and recall@10 against exact.

Each time is the median of 5 calls after a warm-up. The memory bandwidth is measured in the same run by a large
copy, and each search reports the fraction of it that reading its rows once reached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from geomoe.core.retrieval.search import exact_search, int8_search, largest_row_norm, np_bfloat16, quantize_rows
from geomoe.families.pe_moe.index import recall_at
from geomoe.on_ray.bench import options

EXPERTS, DIM, K, SHORTLIST = 3, 1024, 10, 100


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return unit


def _gallery(n: int, rng: np.random.Generator, chunk: int = 50_000) -> np.ndarray:
    """(n, K*D) float32 rows; rows 20c..20c+19 are noisy copies of centre c (views of one building)."""
    rows = np.empty((n, EXPERTS * DIM), np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        centres = rng.standard_normal((size // 20 + 1, EXPERTS, DIM), dtype=np.float32)
        block = np.repeat(centres, 20, axis=0)[:size] + rng.standard_normal((size, EXPERTS, DIM), dtype=np.float32)
        rows[start : start + size] = _unit(block).reshape(size, -1)
    return rows


def _queries(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picked = rows[rng.choice(len(rows), count, replace=False)].reshape(count, EXPERTS, DIM)
    t = _unit(picked + 0.5 * rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(DIM))
    g = rng.dirichlet(np.ones(EXPERTS), count).astype(np.float32)
    return np.ascontiguousarray((t * g[:, :, None]).reshape(count, -1))


def _median_ms(fn: Callable[[], Any], repeats: int = 5) -> tuple[float, Any]:
    out = fn()  # warm-up: page-in, thread pools, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), out


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Memory bandwidth of this machine now: bytes read + written by a large copy, per second (median of 5)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    ms, _ = _median_ms(lambda: np.copyto(dst, src))
    return 2 * nbytes / (ms / 1000) / 1e9


def _plain_bf16(rows_bf16: torch.Tensor, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.mm(torch.from_numpy(queries).bfloat16(), rows_bf16.T)
    return torch.topk(scores, K, dim=1)


def _identical(ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Same rows in the same order; where not, whether only float32 rounding on near-equal scores differs."""
    same = (ours[1] == theirs[1]).all(axis=1)
    return {
        "identical_queries": float(same.mean()),
        "max_score_diff": float(np.abs(ours[0] - theirs[0]).max()),
    }


def _point(rows: dict[str, Any], queries: np.ndarray, bandwidth: float, faiss_flat: Any) -> dict[str, Any]:
    bf16, fp16, int8 = rows["bf16"], rows["fp16"], rows["int8"]
    norm = rows["norm"]
    ours_ms, ours = _median_ms(lambda: exact_search(bf16, queries, K, row_norm_max=norm))
    fp16_ms, fp16_found = _median_ms(lambda: exact_search(fp16, queries, K, row_norm_max=norm))
    plain_ms, _ = _median_ms(lambda: _plain_bf16(rows["bf16_torch"], queries))
    faiss_ms, (faiss_s, faiss_i) = _median_ms(
        lambda: faiss_flat.search(queries, K), repeats=3 if len(queries) > 1 else 5
    )
    int8_ms, (_, int8_found) = _median_ms(lambda: int8_search(int8, queries, K, SHORTLIST))
    gb = bf16.nbytes / 1e9
    return {
        "queries": len(queries),
        "ours_bf16_ms": round(ours_ms, 1),
        "ours_fp16_ms": round(fp16_ms, 1),
        "plain_torch_bf16_ms": round(plain_ms, 1),
        "faiss_flat_fp32_ms": round(faiss_ms, 1),
        "ours_int8_shortlist_ms": round(int8_ms, 1),
        "ours_vs_plain_torch": round(ours_ms / plain_ms, 2),
        "faiss_over_ours": round(faiss_ms / ours_ms, 2),
        "bandwidth_fraction_bf16": round(gb / (ours_ms / 1000) / bandwidth, 2),
        "bandwidth_fraction_fp16": round(gb / (fp16_ms / 1000) / bandwidth, 2),
        "vs_faiss_flat": _identical(ours, (faiss_s, faiss_i)),
        "fp16_vs_bf16_recall@10": round(recall_at(fp16_found[1], ours[1]), 4),
        "int8_recall@10_vs_exact": round(recall_at(int8_found, ours[1]), 4),
    }


def bench_index(sizes: tuple[int, ...] = (200_000,), batches: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    import faiss

    rng = np.random.default_rng(0)
    bandwidth = copy_bandwidth_gbps()
    results = []
    for n in sizes:
        full = _gallery(n, rng)
        queries = {q: _queries(full, q, rng) for q in batches}
        faiss_flat = faiss.IndexFlatIP(full.shape[1])
        bf16 = full.astype(np_bfloat16)
        faiss_flat.add(bf16.astype(np.float32))  # the same stored values, widened: an exact reference
        del full
        fp16 = bf16.astype(np.float16)
        rows = {"bf16": bf16, "fp16": fp16, "int8": quantize_rows(bf16)}
        rows["bf16_torch"] = torch.from_numpy(bf16.view(np.uint16)).view(torch.bfloat16)
        rows["norm"] = max(largest_row_norm(bf16), largest_row_norm(fp16))  # what an index's manifest records
        for q in batches:
            results.append({"gallery": n, **_point(rows, queries[q], bandwidth, faiss_flat)})
        del rows, faiss_flat, bf16, fp16
    parts = [
        f"{r['gallery']:,} rows x {r['queries']} queries: ours {r['ours_bf16_ms']} ms (bf16; fp16 {r['ours_fp16_ms']}) "
        f"= {r['ours_vs_plain_torch']}x plain torch bf16, FAISS flat {r['faiss_over_ours']}x slower, "
        f"{r['bandwidth_fraction_bf16']:.0%} of bandwidth, identical to FAISS on "
        f"{r['vs_faiss_flat']['identical_queries']:.0%}; int8 {r['ours_int8_shortlist_ms']} ms "
        f"(recall@10 {r['int8_recall@10_vs_exact']})"
        for r in results
    ]
    return {
        "benchmark": "index",
        "experts": EXPERTS,
        "dim": DIM,
        "k": K,
        "int8_shortlist": SHORTLIST,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "copy_bandwidth_GBps": round(bandwidth, 1),
        "results": results,
        "summary": f"exact search (copy bandwidth {bandwidth:.1f} GB/s): " + "; ".join(parts),
    }


def run_index(out: str, overrides: list[str]) -> dict[str, Any]:
    sizes = options(overrides).get("sizes", "200000")
    return bench_index(tuple(int(n) for n in sizes.split(",")))
