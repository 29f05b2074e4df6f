"""Benchmarks: each compares two ways of doing the same work in one run and reports the ratio."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from geomoe.storage import write_json_atomic

log = logging.getLogger(__name__)


def run_benchmark(name: str, out: str, overrides: list[str]) -> dict[str, Any]:
    if name == "prepare":
        from geomoe.bench.prepare import bench_prepare

        result = bench_prepare(Path(out), overrides)
    elif name == "pe_moe_step":
        from geomoe.bench.pe_moe import bench_pe_moe_step

        layers = int(overrides[0].split("=", 1)[1]) if overrides and overrides[0].startswith("text_layers=") else 4
        result = bench_pe_moe_step(Path(out), text_layers=layers)
    elif name == "gmoe":
        from geomoe.bench.gmoe import bench_gmoe

        result = bench_gmoe()
    elif name == "rerank":
        from geomoe.bench.rerank import bench_rerank

        result = bench_rerank()
    elif name == "index":
        from geomoe.bench.index import bench_index

        sizes = next((o.split("=", 1)[1] for o in overrides if o.startswith("sizes=")), "200000")
        result = bench_index(tuple(int(s) for s in sizes.split(",")))
    elif name == "serve":
        from geomoe.bench.serve import bench_serve

        given = dict(o.split("=", 1) for o in overrides)
        batching = {"max_batch_size": int(given.get("max_batch_size", 32)),
                    "batch_wait_timeout_s": float(given.get("batch_wait_timeout_s", 0.005))}  # fmt: skip
        result = bench_serve(
            Path(out),
            seconds=float(given.get("seconds", 20.0)),
            batching=batching,
            max_ongoing=int(given.get("max_ongoing_requests", 64)),
            gallery=int(given.get("gallery", 55_000)),
        )
    elif name == "sweep":
        from geomoe.bench.sweep import bench_sweep

        result = bench_sweep()
    elif name == "storage":
        from geomoe.bench.storage import bench_storage

        result = bench_storage(Path(out))
    elif name == "gpu":
        from geomoe.bench.gpu import gpu_check

        result = gpu_check(
            tiny="sizes=tiny" in overrides, device=next((o[7:] for o in overrides if o.startswith("device=")), None)
        )
        if result["gpu"] is None and result.get("sizes") is None:
            print(result["summary"])  # no GPU: one line, nothing written, exit 0
            return result
    elif name == "mining":
        from geomoe.bench.pe_moe import bench_mining

        result = bench_mining()
    else:
        raise ValueError(f"unknown benchmark {name!r}")
    suffix = (
        f"-{result['image_size']}px"
        if name == "prepare"
        else (f"-{result['text_layers']}layers" if "text_layers" in result else "")
    )
    write_json_atomic(Path(out) / f"{name}{suffix}.json", result)
    print(json.dumps(result, indent=2))
    print(result["summary"])
    return result
