"""``geomoe bench prepare``: rows/s of the prepare stage, Ray Data on 2 CPUs vs one plain process.

Both ways run the same per-row work (``RowPreparer``: full image decode check, caption normalisation and
statement splitting, sanitisation and two augmented copies per satellite training pair) on the same
records and write the same hive-partitioned Parquet. Cluster start-up is reported apart from the timing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.dataset as pads

from geomoe.core.config import JobSpec, SynthSpec, parse_spec
from geomoe.core.data.preprocess import PREPARED_SCHEMA, RowPreparer
from geomoe.core.data.records import RejectLog
from geomoe.core.data.sources import read_source
from geomoe.core.data.synthgeo import generate
from geomoe.on_ray.bench import cpu_busy

# 480 buildings x (1 satellite + 10 drone + 3 ground) x 3 captions = 20,160 training pairs, plus the test split.
BENCH_SYNTH = SynthSpec(
    train_buildings=480,
    test_buildings=20,
    drone_views=10,
    ground_views=3,
    train_captions=3,
    test_captions=3,
    image_size=64,
    localization_train=0,
    localization_val=0,
    localization_test=0,
)


def _job(data_root: Path, out: Path) -> JobSpec:
    raw = {
        "name": "bench-prepare",
        "stages": ["prepare"],
        "data": {"format": "geotext", "root": str(data_root)},
        "preprocess": {"output_dir": str(out), "satellite_copies": 2, "force": True},
        "resources": {"num_cpus": 2, "data_concurrency": 2},
    }
    return parse_spec(JobSpec, raw, "bench prepare")


def plain_prepare(spec: JobSpec) -> tuple[int, float]:
    """The same work in one process: read, prepare every row, write partitioned Parquet. Returns (rows out,
    seconds of the per-row work: what parallel tasks can share; reading and writing are the serial rest)."""
    source = read_source(spec.data, RejectLog(spec.preprocess.on_bad_record))
    out = Path(spec.preprocess.output_dir)
    preparer = RowPreparer(spec.preprocess, str((out / "images").resolve()), spec.seed)
    started = time.perf_counter()
    rows = preparer([r.to_row() for r in source.retrieval])
    per_row_s = time.perf_counter() - started
    table = pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)
    table = table.filter(pa.compute.equal(table["reject"], "")).drop_columns(["reject"])
    pads.write_dataset(
        table,
        out / "pairs",
        format="parquet",
        partitioning=["split", "platform"],
        partitioning_flavor="hive",
        existing_data_behavior="overwrite_or_ignore",
    )
    return int(table.num_rows), per_row_s


def _timed_prepare(spec: JobSpec) -> tuple[tuple[float, float], dict[str, Any]]:
    """((seconds, CPU busy fraction), manifest) of the Ray Data prepare."""
    from geomoe.on_ray.pipelines.prepare import prepare

    cpu, started = psutil.cpu_times(), time.perf_counter()
    manifest = prepare(spec)
    return (time.perf_counter() - started, round(cpu_busy(cpu, psutil.cpu_times()), 2)), manifest


def bench_prepare(out: Path, overrides: list[str]) -> dict[str, Any]:
    import ray
    from geomoe.on_ray.ray_env import ensure_ray

    synth = parse_spec(SynthSpec, BENCH_SYNTH.model_dump(), "bench prepare --set", overrides)
    data = out / "data" / f"synthgeo-{synth.image_size}px"
    started = time.perf_counter()
    counts = generate(data, synth)
    generate_s = time.perf_counter() - started
    pairs = counts["geotext"]["train"]["pairs"] + counts["geotext"]["test"]["pairs"]
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)

    plain_spec = _job(data / "geotext", work / "plain")
    cpu, started = psutil.cpu_times(), time.perf_counter()
    plain_rows, per_row_s = plain_prepare(plain_spec)
    plain_s, plain_busy = time.perf_counter() - started, round(cpu_busy(cpu, psutil.cpu_times()), 2)

    ray_spec = _job(data / "geotext", work / "ray")
    started = time.perf_counter()
    ensure_ray(ray_spec.resources)
    startup_s = time.perf_counter() - started
    (ray_s, ray_busy), manifest = _timed_prepare(ray_spec)
    # The same again on the now warm cluster (its task workers and Ray Data's actors already started): what a
    # job's prepare pays when the cluster is already running, as on a real cluster.
    (warm_s, warm_busy), _ = _timed_prepare(_job(data / "geotext", work / "ray-warm"))
    ray.shutdown()
    if manifest["total"] != plain_rows:
        raise RuntimeError(f"the two ways disagree: plain wrote {plain_rows} rows, Ray Data {manifest['total']}")
    plain_rps, ray_rps, warm_rps = pairs / plain_s, pairs / ray_s, pairs / warm_s
    return {
        "benchmark": "prepare",
        "input_pairs": pairs,
        "image_size": synth.image_size,
        "output_rows": plain_rows,
        "cpu_cores": os.cpu_count(),
        "synth_generate_s": round(generate_s, 1),
        "ray_startup_s": round(startup_s, 2),
        "plain": {"seconds": round(plain_s, 2), "rows_per_s": round(plain_rps, 1), "cpu_busy": plain_busy},
        "ray_data_2cpu": {"seconds": round(ray_s, 2), "rows_per_s": round(ray_rps, 1), "cpu_busy": ray_busy},
        "ray_data_2cpu_warm": {"seconds": round(warm_s, 2), "rows_per_s": round(warm_rps, 1), "cpu_busy": warm_busy},
        "speedup_ray_over_plain": round(ray_rps / plain_rps, 2),
        "speedup_warm_over_plain": round(warm_rps / plain_rps, 2),
        # Amdahl: with the per-row work split perfectly over the cores and nothing else added
        "per_row_work_s": round(per_row_s, 2),
        "ideal_speedup": round(plain_s / (plain_s - per_row_s + per_row_s / (os.cpu_count() or 1)), 2),
        "summary": f"prepare: {pairs} pairs of {synth.image_size}px images -> {plain_rows} rows; "
        f"plain {plain_rps:.0f} rows/s (CPU {plain_busy:.0%} busy), "
        f"Ray Data (2 CPUs) {ray_rps:.0f} rows/s (CPU {ray_busy:.0%} busy), ratio {ray_rps / plain_rps:.2f}x "
        f"(warm cluster: {warm_rps:.0f} rows/s, {warm_rps / plain_rps:.2f}x); "
        f"per-row work {per_row_s:.1f} of {plain_s:.1f} s",
    }
