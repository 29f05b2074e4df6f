"""Benchmarks: each compares two ways of doing the same work in one run and reports the ratio."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cpu_busy(before: Any, after: Any) -> float:
    """Fraction of all cores' time busy between two ``psutil.cpu_times()`` readings (/proc/stat)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return 1.0 - idle / total if total > 0 else 0.0


def _options(overrides: list[str]) -> dict[str, str]:
    """``--set key=value`` options of a benchmark."""
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def _prepare(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.prepare import bench_prepare

    return bench_prepare(Path(out), overrides)


def _pe_moe_step(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.pe_moe import bench_pe_moe_step

    return bench_pe_moe_step(Path(out), text_layers=int(_options(overrides).get("text_layers", 4)))


def _gmoe(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.gmoe import bench_gmoe

    return bench_gmoe()


def _rerank(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.rerank import bench_rerank

    return bench_rerank()


def _index(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.index import bench_index

    sizes = _options(overrides).get("sizes", "200000")
    return bench_index(tuple(int(n) for n in sizes.split(",")))


def _serve(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.serve import bench_serve

    given = _options(overrides)
    batching = {"max_batch_size": int(given.get("max_batch_size", 32)),
                "batch_wait_timeout_s": float(given.get("batch_wait_timeout_s", 0.005))}  # fmt: skip
    return bench_serve(
        Path(out),
        seconds=float(given.get("seconds", 20.0)),
        batching=batching,
        max_ongoing=int(given.get("max_ongoing_requests", 64)),
        gallery=int(given.get("gallery", 55_000)),
    )


def _sweep(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.sweep import bench_sweep

    return bench_sweep()


def _storage(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.storage import bench_storage

    return bench_storage(Path(out))


def _mining(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.pe_moe import bench_mining

    return bench_mining()


def _eval_scale(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.eval_scale import bench_eval_scale

    given = _options(overrides)
    return bench_eval_scale(dim=int(given.get("dim", 32)), scale=int(given.get("scale", 10)))


def _gpu(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.bench.gpu import gpu_check

    given = _options(overrides)
    return gpu_check(tiny=given.get("sizes") == "tiny", device=given.get("device"))


BENCHMARKS: dict[str, Callable[[str, list[str]], dict[str, Any]]] = {
    "prepare": _prepare,
    "pe_moe_step": _pe_moe_step,
    "mining": _mining,
    "gmoe": _gmoe,
    "rerank": _rerank,
    "sweep": _sweep,
    "index": _index,
    "serve": _serve,
    "storage": _storage,
    "eval_scale": _eval_scale,
    "gpu": _gpu,
}


def run_benchmark(name: str, out: str, overrides: list[str]) -> dict[str, Any]:
    # imported here: the CLI imports this module for BENCHMARKS' names on every start, and storage pulls pyarrow
    from geomoe.ownership import Claim, claim_dir
    from geomoe.storage import write_json_atomic

    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}")
    # a benchmark clears scratch folders under --out: only in a folder that is empty or geomoe's own
    claim = Claim("--out", stage="bench")
    if name != "gpu":  # the GPU check writes nothing on a machine without a GPU, and only its result otherwise
        claim_dir(out, claim)
    result = BENCHMARKS[name](out, overrides)
    if name == "gpu" and result["gpu"] is None and "sizes" not in result:
        print(result["summary"])  # no GPU: one line, nothing written, exit 0
        return result
    if name == "gpu":
        claim_dir(out, claim)
    suffix = (
        f"-{result['image_size']}px"
        if name == "prepare"
        else (f"-{result['text_layers']}layers" if "text_layers" in result else "")
    )
    write_json_atomic(Path(out) / f"{name}{suffix}.json", result)
    print(json.dumps(result, indent=2))
    print(result["summary"])
    return result
