"""Benchmarks: each compares two ways of doing the same work in one run and reports the ratio."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cpu_busy(before: Any, after: Any) -> float:
    """Fraction of all cores' time busy between two ``psutil.cpu_times()`` readings (/proc/stat)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return 1.0 - idle / total if total > 0 else 0.0


def options(overrides: list[str]) -> dict[str, str]:
    """``--set key=value`` options of a benchmark."""
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def _prepare(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.on_ray.bench.prepare_speed import bench_prepare

    return bench_prepare(Path(out), overrides)


def _rerank(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.on_ray.bench.rerank_speed import bench_rerank

    return bench_rerank()


def _sweep(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.on_ray.bench.sweep_speed import bench_sweep

    return bench_sweep()


def _storage(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.on_ray.bench.storage_speed import bench_storage

    return bench_storage(Path(out))


def _gpu(out: str, overrides: list[str]) -> dict[str, Any]:
    from geomoe.on_ray.bench.gpu import gpu_check

    given = options(overrides)
    return gpu_check(tiny=given.get("sizes") == "tiny", device=given.get("device"))


BENCHMARKS: dict[str, Callable[[str, list[str]], dict[str, Any]]] = {
    "prepare": _prepare,
    "rerank": _rerank,
    "sweep": _sweep,
    "storage": _storage,
    "gpu": _gpu,
}
ENTRY_POINT_GROUP = "geomoe.benchmarks"  # a family's own benchmarks (pyproject.toml): name -> "module:function"


def names() -> list[str]:
    """Every benchmark: the shared ones above and those families declare (read without importing them)."""
    return sorted([*BENCHMARKS, *(point.name for point in entry_points(group=ENTRY_POINT_GROUP))])


def runner(name: str) -> Callable[[str, list[str]], dict[str, Any]]:
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            loaded: Callable[[str, list[str]], dict[str, Any]] = point.load()
            return loaded
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(names())}")


def run_benchmark(name: str, out: str, overrides: list[str]) -> dict[str, Any]:
    # imported here: the CLI imports this module for BENCHMARKS' names on every start, and storage pulls pyarrow
    from geomoe.core.ownership import Claim, claim_dir
    from geomoe.core.storage import write_json_atomic

    run = runner(name)
    # a benchmark clears scratch folders under --out: only in a folder that is empty or geomoe's own
    claim = Claim("--out", stage="bench")
    if name != "gpu":  # the GPU check writes nothing on a machine without a GPU, and only its result otherwise
        claim_dir(out, claim)
    result = run(out, overrides)
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
