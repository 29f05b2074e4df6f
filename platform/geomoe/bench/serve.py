"""``geomoe bench serve``: the quickstart retriever (serve/quickstart.yaml's index and checkpoint, after
``make demo``) over real HTTP at concurrency 1, 8 and 32, with the query encoder's ``@serve.batch`` against one
forward pass per query, in one run on one local cluster. Reports throughput, p50/p95/p99 and failures per
point and the batched/unbatched throughput ratio; /search without re-ranking, so the encoder is what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from geomoe.serving.load import drive

SERVE_CONFIG = Path("serve/quickstart.yaml")
QUERIES = [
    "a drone view of a building with a red roof",
    "a satellite image of a park next to a parking lot",
    "a street view of a tall glass tower",
    "an aerial photo of a round building with a green roof",
]


def bench_serve(concurrencies: tuple[int, ...] = (1, 8, 32), seconds: float = 20.0) -> dict[str, Any]:
    import ray
    from geomoe.serving.app import compose
    from ray import serve

    args = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]
    args = {"index": args["index"]}  # search only: no re-ranker, captioner or localizer replicas
    # Serve's default max_ongoing_requests (5) would queue 32 clients at the ingress, not at the encoder
    options = {"QueryEncoder": {"max_ongoing_requests": 64}, "Ingress": {"max_ongoing_requests": 64}}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    points: dict[str, list[dict[str, Any]]] = {}
    try:
        for way, batched in (("batched", True), ("unbatched", False)):
            serve.run(compose(args, batched=batched, options=options), name="bench", route_prefix="/")
            drive("http://127.0.0.1:8000/search", _body, 4, 3.0)  # warm-up, not reported
            points[way] = [drive("http://127.0.0.1:8000/search", _body, c, seconds) for c in concurrencies]
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    ratios = {
        str(b["concurrency"]): round(b["throughput_rps"] / max(u["throughput_rps"], 1e-9), 2)
        for b, u in zip(points["batched"], points["unbatched"], strict=True)
    }
    lines = [
        f"c={b['concurrency']}: batched {b['throughput_rps']} q/s (p50 {b['p50_ms']} / p99 {b['p99_ms']} ms, "
        f"{b['failed']} failed) vs unbatched {u['throughput_rps']} q/s (p50 {u['p50_ms']} / p99 {u['p99_ms']} ms, "
        f"{u['failed']} failed): {ratios[str(b['concurrency'])]}x"
        for b, u in zip(points["batched"], points["unbatched"], strict=True)
    ]
    return {"seconds_per_point": seconds, "points": points, "ratio_batched": ratios, "summary": "\n".join(lines)}


def _body(i: int) -> dict[str, Any]:
    return {"query": f"{QUERIES[i % len(QUERIES)]} {i}", "k": 10}
