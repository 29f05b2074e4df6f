"""``geomoe bench rerank``: CGRS per-query latency with a caption store (captions written at index time)
against captioning the 20 candidates at query time with the same captioner (the CGRS paper's way).

Both ways then score the candidates' captions against the query and fuse with the first-stage scores in the
same way (lexical similarity here, so the comparison isolates captioning). Tiny random captioner (1-layer ViT +
1-layer GPT-2) on 64-px synthgeo-sized images, CPU or GPU.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geomoe.core.retrieval.rerank import LexicalScorer, fuse_top_n, top_n

WORDS = [
    "red",
    "grey",
    "white",
    "flat",
    "pitched",
    "roof",
    "building",
    "drone",
    "view",
    "street",
    "facade",
    "pond",
    "tree",
    "tall",
    "small",
]


def _rerank(first_N: np.ndarray, top: np.ndarray, captions: list[str], query: str, scorer: LexicalScorer) -> np.ndarray:
    caption_T = scorer.score(query, captions)[None]
    fused: np.ndarray = fuse_top_n(first_N[None], caption_T, top[None], 0.5, "zscore")[0]
    return fused


def bench_rerank(gallery: int = 200, queries: int = 20, candidates: int = 20, image_size: int = 64) -> dict[str, Any]:
    from geomoe.core.engines.local import TransformersCaptioner
    from geomoe.core.models.tiny import build_tiny_captioner

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = []
        for i in range(gallery):
            path = root / f"image_{i:04d}.jpg"
            Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        captioner = TransformersCaptioner(str(build_tiny_captioner(root / "vlm", [" ".join(WORDS)], image_size)), 24)
        started = time.perf_counter()
        store = dict(zip(paths, [c or "" for c in captioner.caption(paths)], strict=True))  # index time
        index_s = time.perf_counter() - started
        scorer = LexicalScorer(list(store.values()))
        texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(queries)]
        first = rng.standard_normal((queries, gallery))
        timings: dict[str, list[float]] = {"store": [], "query_time": []}
        for q, query in enumerate(texts):
            top = top_n(first[q : q + 1], candidates)[0]
            start = time.perf_counter()
            with_store = _rerank(first[q], top, [store[paths[i]] for i in top], query, scorer)
            timings["store"].append(time.perf_counter() - start)
            start = time.perf_counter()
            fresh = [c or "" for c in captioner.caption([paths[i] for i in top])]
            at_query = _rerank(first[q], top, fresh, query, scorer)
            timings["query_time"].append(time.perf_counter() - start)
            if not np.allclose(with_store, at_query):  # same captioner, greedy: the same ranking either way
                raise AssertionError("re-ranking with the store and at query time disagree")
    store_ms, fresh_ms = (1000 * float(np.median(timings[k])) for k in ("store", "query_time"))
    return {
        "benchmark": "rerank",
        "gallery": gallery,
        "queries": queries,
        "candidates": candidates,
        "index_time_s": round(index_s, 3),
        "store_ms_per_query": round(store_ms, 3),
        "query_time_ms_per_query": round(fresh_ms, 3),
        "speedup": round(fresh_ms / store_ms, 1),
        "summary": (
            f"rerank top-{candidates}: caption store {store_ms:.2f} ms/query vs captioning at query time "
            f"{fresh_ms:.1f} ms/query ({fresh_ms / store_ms:.0f}x); the store cost {index_s:.2f} s once for "
            f"{gallery} images (tiny captioner)"
        ),
    }
