"""``geomoe bench eval_scale``: PE-MoE retrieval evaluation at GeoText-1652's test size, blockwise against the full
query x gallery matrix.

The data is synthetic in GeoText's test shape: 165,681 captions of 55,227 images (3 per image) of 951 buildings
(about 58 images each, platforms in turn), 3 experts of a small width (``dim``, default 32: the blockwise cost
scales with it, the full matrix does not) with random gates. Each way runs in its own fresh process, which reports
its peak resident memory (the kernel's high-water mark) and its time:

- blockwise (``geomoe.core.retrieval.blockwise``, what evaluation runs: the ranks, then each caption's top 20 for CGRS):
  at the full size, and at ``1/scale`` of it;
- the full matrix (``fused_scores`` -> ``retrieval_report``, what evaluation ran before): at ``1/scale`` only, since
  at the full size its float32 scores alone are 36.6 GB. Both ways' reports must be equal there.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from typing import Any

import numpy as np

from geomoe.on_ray.bench import options

CAPTIONS, IMAGES, BUILDINGS, EXPERTS = 165_681, 55_227, 951, 3
RERANK_TOP = 20  # CGRS's candidates per caption


def synthetic(captions: int, images: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Embeddings and labels in GeoText's test shape: each caption a noisy copy of its image's vectors."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((EXPERTS, images, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    caption_image = np.sort(rng.integers(0, images, captions))
    caption_image[: min(images, captions)] = np.arange(min(images, captions))  # every image has a caption
    t = v[:, caption_image] + 1.5 * rng.standard_normal((EXPERTS, captions, dim), dtype=np.float32) / np.sqrt(dim)
    t /= np.linalg.norm(t, axis=2, keepdims=True)
    buildings = max(1, round(BUILDINGS * images / IMAGES))
    return {
        "t": t,
        "g": rng.dirichlet(np.ones(EXPERTS), captions).astype(np.float32),
        "v": v,
        "caption_image": caption_image,
        "building": (np.arange(images) * buildings // images).astype(str),
        "platform": np.array(["satellite", "drone", "ground"])[np.arange(images) % 3],
    }


def _evaluate(way: str, captions: int, images: int, dim: int) -> dict[str, Any]:
    """One way's report and its cost, in this (fresh) process."""
    from geomoe.core.metrics import protocol_labels, report_from_ranks, retrieval_report
    from geomoe.core.retrieval.blockwise import protocol_ranks, top_candidates
    from geomoe.families.pe_moe.index import index_rows, query_rows
    from geomoe.families.pe_moe.model import fused_scores

    data = synthetic(captions, images, dim)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if way == "full":
        scores = fused_scores(data["t"], data["v"], data["g"])
        report = retrieval_report(scores, data["caption_image"], data["building"], data["platform"], (1, 5, 10))
    else:
        labels = protocol_labels(data["caption_image"], data["building"])
        queries, gallery = query_rows(data["t"], data["g"]), index_rows(data["v"], "float32")
        ranks = protocol_ranks(queries, gallery, labels)
        report = report_from_ranks(ranks, data["caption_image"], data["platform"], (1, 5, 10))
        top_candidates(queries, gallery, RERANK_TOP)  # what CGRS re-ranking asks for
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    recalls = {p: {"t2i": e["t2i"], "i2t": e["i2t"]} for p, e in report.items()}
    return {"seconds": round(seconds, 2), "peak_gb": round(peak / 2**20, 3), "inputs_gb": round(before / 2**20, 3),
            "recalls": recalls}  # fmt: skip


def _in_fresh_process(way: str, captions: int, images: int, dim: int) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_evaluate, (way, captions, images, dim))
    return result


def bench_eval_scale(dim: int = 32, scale: int = 10) -> dict[str, Any]:
    small = (CAPTIONS // scale, IMAGES // scale)
    blockwise_small = _in_fresh_process("blockwise", *small, dim)
    full_small = _in_fresh_process("full", *small, dim)
    blockwise = _in_fresh_process("blockwise", CAPTIONS, IMAGES, dim)
    equal = blockwise_small["recalls"] == full_small["recalls"]
    matrix_gb = CAPTIONS * IMAGES * 4 / 1e9
    return {
        "captions": CAPTIONS,
        "images": IMAGES,
        "experts": EXPERTS,
        "dim": dim,
        "full_size": {"blockwise": blockwise, "full_matrix_scores_gb": round(matrix_gb, 1)},
        f"one_{scale}th": {
            "captions": small[0],
            "images": small[1],
            "blockwise": blockwise_small,
            "full_matrix": full_small,
            "reports_equal": equal,
        },
        "summary": (
            f"eval at GeoText test size ({CAPTIONS:,} x {IMAGES:,}, {EXPERTS} experts x {dim}): blockwise peak "
            f"{blockwise['peak_gb']:.2f} GB in {blockwise['seconds']:.0f} s (a full matrix: {matrix_gb:.1f} GB of "
            f"scores alone); at 1/{scale}: blockwise {blockwise_small['peak_gb']:.2f} GB / "
            f"{blockwise_small['seconds']:.1f} s vs full matrix {full_small['peak_gb']:.2f} GB / "
            f"{full_small['seconds']:.1f} s, reports equal: {equal}"
        ),
    }


def run_eval_scale(out: str, overrides: list[str]) -> dict[str, Any]:
    given = options(overrides)
    return bench_eval_scale(dim=int(given.get("dim", 32)), scale=int(given.get("scale", 10)))
