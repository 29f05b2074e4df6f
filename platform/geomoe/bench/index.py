"""``geomoe bench index``: PE-MoE gallery search at serving scale, three ways over the same fp16 embeddings
(3 experts x 1024-d unit vectors drawn around one centre per 20 images, as views of one building cluster;
64 queries, each a noisy copy of a gallery row, with random gates):

- naive: per-expert similarity matrices, then the gate-weighted fusion and a top-k (K passes over the gallery);
- fused: one inner product per row of the concatenated matrix (geomoe.retrieval.index.exact_search);
- FAISS: IVF over fp16 scalar-quantised rows (inner product), recall@10 against exact reported.

Queries/s and per-batch latency (median of 3); sizes default to 10k, 100k and 1M images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from geomoe.retrieval.index import exact_search, per_expert_search, recall_at

EXPERTS, DIM, QUERIES, K = 3, 1024, 64, 10


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return unit


def _gallery(n: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """(n, K*D) fp16 rows; rows 20c..20c+19 are noisy copies of centre c (random unit vectors have no structure,
    which no approximate index can exploit; real galleries have it)."""
    rows = np.empty((n, EXPERTS * DIM), np.float16)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        centres = rng.standard_normal((size // 20 + 1, EXPERTS, DIM), dtype=np.float32)
        block = np.repeat(centres, 20, axis=0)[:size] + rng.standard_normal((size, EXPERTS, DIM), dtype=np.float32)
        rows[start : start + size] = _unit(block).reshape(size, -1)
    return rows


def _median_s(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def _faiss_ivf(rows: np.ndarray, chunk: int = 100_000) -> Any:
    import faiss

    d = rows.shape[1]
    nlist = int(max(16, min(1024, np.sqrt(len(rows)))))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    sample = rows[np.random.default_rng(1).choice(len(rows), min(len(rows), 40 * nlist), replace=False)]
    index.train(sample.astype(np.float32))
    for start in range(0, len(rows), chunk):
        index.add(rows[start : start + chunk].astype(np.float32))
    index.nprobe = max(1, nlist // 16)
    return index


def bench_index(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    g = rng.dirichlet(np.ones(EXPERTS), QUERIES).astype(np.float32)
    results = []
    for n in sizes:
        rows = _gallery(n, rng)
        picked = rows[rng.choice(n, QUERIES, replace=False)].astype(np.float32).reshape(QUERIES, EXPERTS, DIM)
        t = _unit(picked + 0.5 * rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(DIM)).transpose(1, 0, 2)
        queries = np.ascontiguousarray((t * g.T[:, :, None]).transpose(1, 0, 2).reshape(QUERIES, -1))
        per_expert = np.ascontiguousarray(rows.reshape(n, EXPERTS, DIM).transpose(1, 0, 2))
        naive_s, (_, naive) = _median_s(partial(per_expert_search, per_expert, t, g, K))
        del per_expert
        fused_s, (_, fused) = _median_s(partial(exact_search, rows, queries, K))
        build_start = time.perf_counter()
        ivf = _faiss_ivf(rows)
        build_s = time.perf_counter() - build_start
        faiss_s, (_, approx) = _median_s(partial(ivf.search, queries, K))
        row = {
            "gallery": n,
            "naive_qps": round(QUERIES / naive_s, 1),
            "fused_qps": round(QUERIES / fused_s, 1),
            "faiss_ivf_qps": round(QUERIES / faiss_s, 1),
            "naive_batch_ms": round(1000 * naive_s, 1),
            "fused_batch_ms": round(1000 * fused_s, 1),
            "faiss_ivf_batch_ms": round(1000 * faiss_s, 1),
            "faiss_ivf_build_s": round(build_s, 1),
            "fused_vs_naive": round(naive_s / fused_s, 2),
            "faiss_vs_fused": round(fused_s / faiss_s, 2),
            "naive_equals_fused_top10": float(recall_at(naive, fused)),
            "faiss_ivf_recall@10": round(recall_at(approx, fused), 4),
        }
        results.append(row)
        del rows, ivf
    parts = [
        f"{r['gallery']:,}: fused {r['fused_qps']} q/s vs naive {r['naive_qps']} ({r['fused_vs_naive']}x), "
        f"FAISS IVF {r['faiss_ivf_qps']} q/s (recall@10 {r['faiss_ivf_recall@10']})"
        for r in results
    ]
    return {
        "benchmark": "index",
        "experts": EXPERTS,
        "dim": DIM,
        "queries": QUERIES,
        "storage": "float16",
        "results": results,
        "summary": "index search, 3 experts x 1024-d fp16, 64 queries per batch: " + "; ".join(parts),
    }
