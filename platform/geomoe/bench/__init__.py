"""Benchmarks: each compares two ways of doing the same work in one run and reports the ratio."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from geomoe.io import write_json_atomic

log = logging.getLogger(__name__)


def run_benchmark(name: str, out: str, overrides: list[str]) -> dict[str, Any]:
    if name == "prepare":
        from geomoe.bench.prepare import bench_prepare

        result = bench_prepare(Path(out), overrides)
    else:
        raise ValueError(f"unknown benchmark {name!r}")
    suffix = f"-{result['image_size']}px" if "image_size" in result else ""
    write_json_atomic(Path(out) / f"{name}{suffix}.json", result)
    print(json.dumps(result, indent=2))
    print(result["summary"])
    return result
