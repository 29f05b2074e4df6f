"""``geomoe bench serve``: the retriever under load at a production-like shape, over real HTTP on a local cluster.

The shape: a PE-MoE query encoder whose text model has XLM-R base's size (12 layers x 768, FFN 3072; random
weights, a local tokenizer) and a gallery of 55,000 images (GeoText-1652's test size) as 3 x 1024-d fp16 rows
(330 MB, read once per scan). At concurrency 1, 8 and 32, ``@serve.batch`` (the encoder's forward pass and the
gallery scan shared by a batch) against one query at a time, each point ``seconds`` long after a warm-up.
The Serve overhead (HTTP proxy, ingress and the two deployment hops) is measured apart, with no-op stages that
return at once. Reports throughput, p50/p95/p99 and failures per point, and the batched/unbatched ratios.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from geomoe.on_ray.bench import options
from geomoe.on_ray.serving.load import drive

QUERIES = [
    "a drone view of a building with a red roof",
    "a satellite image of a park next to a parking lot",
    "a street view of a tall glass tower",
    "an aerial photo of a round building with a green roof",
]
GALLERY, EXPERTS, DIM = 55_000, 3, 1024
TEXT = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072}  # XLM-R base
CONCURRENCY = (1, 8, 32)
NUM_CPUS = 4  # logical CPUs for the local cluster: replicas reserve fractions; the machine's cores are shared


def production_shape(work: Path, gallery: int = GALLERY, text: dict[str, int] | None = None) -> dict[str, Any]:
    """Write (once) a checkpoint with an XLM-R-base-size text model and a ``gallery``-row index naming it; return
    the application's args."""
    import torch

    from geomoe.core.config import JobSpec, parse_spec
    from geomoe.core.models.checkpoint import save_checkpoint
    from geomoe.core.models.tiny import save_tiny_image_model, save_tiny_text_model
    from geomoe.families.pe_moe.factory import build_pe_moe
    from geomoe.families.pe_moe.index import write_index
    from geomoe.families.pe_moe.spec import PEMoEModelSpec

    text = text or TEXT
    tag = f"{gallery}-{text['layers']}x{text['hidden']}"
    checkpoint, index = work / f"checkpoint-{tag}", work / f"index-{tag}"
    args = {"index": str(index)}
    if (index / "manifest.json").is_file():
        return args
    fields = {
        "embed_dim": DIM,
        "text": {"source": str(work / f"text-{tag}"), "tail_layers": 2, "max_length": 32},
        "image": {
            "name": "geomoe-eva02-micro",
            "pretrained": str(work / "image.pt"),
            "image_size": 64,
            "tail_blocks": 1,
        },
    }
    model_spec = PEMoEModelSpec.model_validate(fields).model_dump(mode="json")  # its family name from the spec
    raw = {"name": "bench-serve", "stages": ["train"], "data": {"format": "geotext", "root": str(work)},
           "preprocess": {"output_dir": str(work / "prepared")}}  # fmt: skip
    spec = parse_spec(JobSpec, {**raw, "model": model_spec}, "bench serve")
    corpus = [f"{q} {i}" for i in range(50) for q in QUERIES]
    save_tiny_text_model(work / f"text-{tag}", corpus, text["hidden"], text["layers"], text["heads"], 36, 0,
                         intermediate=text["intermediate"])  # fmt: skip
    if not (work / "image.pt").is_file():
        save_tiny_image_model(work / "image.pt")
    torch.manual_seed(0)
    model, _ = build_pe_moe(spec.model_as(PEMoEModelSpec))
    checkpoint.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, model, spec, 1, 0)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((gallery, EXPERTS, DIM), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=2, keepdims=True)
    platforms = [("satellite", "drone", "ground")[i % 3] for i in range(gallery)]
    info = {"checkpoint": str(checkpoint), "split": "test", "experts": ["satellite", "drone", "ground"],
            "expert_dim": DIM, "platforms": platforms}  # fmt: skip
    write_index(index, rows.reshape(gallery, -1).astype(np.float16), [f"img{i}" for i in range(gallery)], info)
    return args


def _noop_stages() -> dict[str, Any]:
    """Deployments with the encoder's and the search's methods that do no work: what is left is Serve's cost."""
    from ray import serve

    @serve.deployment(name="QueryEncoder", ray_actor_options={"num_cpus": 0.5})
    class NoopEncoder:
        def __init__(self, checkpoint: str, batching: dict[str, Any] | None = None) -> None:
            self.vector = np.zeros(EXPERTS * DIM, np.float32)

        async def ready(self) -> bool:
            return True

        async def encode(self, query: str) -> dict[str, Any]:
            return {"vector": self.vector, "gate": {}}

        encode_unbatched = encode

    @serve.deployment(name="GallerySearch", ray_actor_options={"num_cpus": 0.5})
    class NoopSearch:
        def __init__(self, index: str, batching: dict[str, Any] | None = None) -> None:
            pass

        async def ready(self) -> bool:
            return True

        async def search(self, call: Any) -> list[dict[str, Any]]:
            return []

        search_unbatched = search

    return {"QueryEncoder": NoopEncoder, "GallerySearch": NoopSearch}


def _body(i: int) -> dict[str, Any]:
    return {"query": f"{QUERIES[i % len(QUERIES)]} {i}", "k": 10}


def _run_points(app: Any, concurrencies: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    from ray import serve

    serve.run(app, name="bench", route_prefix="/")
    drive("http://127.0.0.1:8000/search", _body, 8, 3.0)  # warm-up: not reported
    points = [drive("http://127.0.0.1:8000/search", _body, c, seconds) for c in concurrencies]
    serve.delete("bench")
    return points


def bench_serve(
    out: Path,
    concurrencies: tuple[int, ...] = CONCURRENCY,
    seconds: float = 20.0,
    batching: dict[str, Any] | None = None,
    max_ongoing: int = 64,
    gallery: int = GALLERY,
    text: dict[str, int] | None = None,
) -> dict[str, Any]:
    import ray
    from geomoe.on_ray.serving.app import compose
    from ray import serve

    started = time.perf_counter()
    args = production_shape(out / "serve_shape", gallery, text)
    build_s = time.perf_counter() - started
    batching = batching or {"max_batch_size": 32, "batch_wait_timeout_s": 0.005}
    # max_ongoing_requests: Serve's default (5) would queue the clients at the proxy, not where batches form
    options = {name: {"max_ongoing_requests": max_ongoing} for name in ("QueryEncoder", "GallerySearch", "Ingress")}
    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=False)
    points: dict[str, list[dict[str, Any]]] = {}
    try:
        app_args = {**args, "batching": batching}
        points["overhead"] = _run_points(compose(app_args, options=options, swap=_noop_stages()), (1, 32), seconds)
        for way, batched in (("batched", True), ("unbatched", False)):
            points[way] = _run_points(compose(app_args, batched=batched, options=options), concurrencies, seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    return _report(points, batching, max_ongoing, gallery, text or TEXT, seconds, build_s)


def _report(
    points: dict[str, list[dict[str, Any]]],
    batching: dict[str, Any],
    max_ongoing: int,
    gallery: int,
    text: dict[str, int],
    seconds: float,
    build_s: float,
) -> dict[str, Any]:
    pairs = list(zip(points["batched"], points["unbatched"], strict=True))
    ratios = {
        str(b["concurrency"]): {
            "throughput": round(b["throughput_rps"] / max(u["throughput_rps"], 1e-9), 2),
            "p99": round(b["p99_ms"] / max(u["p99_ms"], 1e-9), 2),
        }
        for b, u in pairs
    }
    overhead = {str(p["concurrency"]): {"p50_ms": p["p50_ms"], "rps": p["throughput_rps"]} for p in points["overhead"]}
    lines = [
        f"c={b['concurrency']}: batched {b['throughput_rps']} q/s (p50 {b['p50_ms']} / p99 {b['p99_ms']} ms, "
        f"{b['failed']} failed) vs unbatched {u['throughput_rps']} q/s (p50 {u['p50_ms']} / p99 {u['p99_ms']} ms, "
        f"{u['failed']} failed): {ratios[str(b['concurrency'])]['throughput']}x throughput, "
        f"{ratios[str(b['concurrency'])]['p99']}x p99"
        for b, u in pairs
    ]
    one, many = points["overhead"][0], points["overhead"][-1]
    lines.append(f"Serve overhead (no-op stages): p50 {one['p50_ms']} ms at c=1, {many['throughput_rps']} q/s at c=32")
    return {
        "benchmark": "serve",
        "gallery": gallery,
        "text_model": text,
        "batching": batching,
        "max_ongoing_requests": max_ongoing,
        "seconds_per_point": seconds,
        "shape_build_s": round(build_s, 1),
        "points": points,
        "ratio_batched": ratios,
        "serve_overhead": overhead,
        "summary": "\n".join(lines),
    }


def run_serve(out: str, overrides: list[str]) -> dict[str, Any]:
    given = options(overrides)
    batching = {"max_batch_size": int(given.get("max_batch_size", 32)),
                "batch_wait_timeout_s": float(given.get("batch_wait_timeout_s", 0.005))}  # fmt: skip
    return bench_serve(
        Path(out),
        seconds=float(given.get("seconds", 20.0)),
        batching=batching,
        max_ongoing=int(given.get("max_ongoing_requests", 64)),
        gallery=int(given.get("gallery", 55_000)),
    )
