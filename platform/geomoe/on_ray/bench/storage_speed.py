"""``geomoe bench storage``: the cost of object storage, measured against local disk in one run.

1. Prepare, then one training epoch (and its evaluation) of a quickstart-shaped PE-MoE job, once with data and
   outputs on local disk and once with both on an S3 server on 127.0.0.1 (moto's server, started here behind a
   counter of its requests by operation). A first local run (Ray's start, the tiny models' build) is reported
   apart; the ratio compares the next two. The S3 run's requests per phase show what the image table saves: a
   few per shard, against one per image per epoch before it.
2. The image read path: N gallery images read and decoded directly from local files, through the storage
   layer from local disk, and through the storage layer from S3 (one at a time, and 16 reads in flight).

The S3 server runs on this machine, in this process (moto's threaded server), so its "network" is a loopback
with almost no latency but every request is served by Python code sharing the client's interpreter: the ratios
bound the overhead of our own code and of the S3 protocol, not the behaviour of a real object store
(docs/benchmarks.md).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec, SynthSpec, load_job, parse_spec
from geomoe.core.errors import GeomoeError

QUICKSTART = Path(__file__).resolve().parents[3] / "jobs" / "quickstart.yaml"
BENCH_SYNTH = SynthSpec(train_buildings=96, test_buildings=12, drone_views=4, ground_views=2, image_size=64)


def _operation(environ: dict[str, Any]) -> str:
    """An S3 request's kind: GET (an object, ranged or whole), LIST (a bucket), HEAD, PUT, POST, DELETE."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if method == "GET" and path.strip("/").count("/") == 0:
        return "LIST"
    return str(method)


@contextmanager
def s3_server(requests: Counter[str] | None = None) -> Iterator[str]:
    """An S3 API on a free loopback port, with the standard variables pointing at it (set before Ray starts);
    every request it serves is counted into ``requests`` by ``_operation``."""
    try:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server
    except ImportError as err:
        raise GeomoeError("bench storage needs moto's server (pip install -e '.[dev]')") from err
    app = DomainDispatcherApplication(create_backend_app)
    counts = Counter[str]() if requests is None else requests

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/moto-api"):
            counts[_operation(environ)] += 1
        return app(environ, start_response)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a log line per request costs the server's CPU
    server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    try:
        yield endpoint
    finally:
        server.shutdown()
        thread.join()


def _job(data_root: str, out: str, models: Path) -> JobSpec:
    """The quickstart's model and training settings, one stage-1 epoch, no baselines, captions or index."""
    base = load_job(QUICKSTART).model_dump(mode="json")
    base.update(name="bench-storage", stages=["prepare", "train"], output_root=out, baselines={})
    base.pop("caption")
    base.pop("index")
    base["data"] = {"format": "geotext", "root": data_root}
    base["preprocess"] |= {"output_dir": f"{out}/prepared"}
    base["eval"]["rerank"] = []
    base["train"] |= {"stage1_epochs": 1, "stage2_epochs": 0}
    base["model"]["text"]["source"] = str(models / "text")
    base["model"]["image"]["pretrained"] = str(models / "image.pt")
    return parse_spec(JobSpec, base, "bench storage")


PHASES = {"prepare_s": ["prepare"], "train_epoch_and_eval_s": ["train"]}


def _timed_job(spec: JobSpec, requests: Counter[str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Seconds of each phase (prepare; one epoch and its evaluation), run as two jobs; with ``requests`` (the S3
    server's counter), the storage requests each phase made."""
    from geomoe.on_ray.jobs import run_job

    seconds: dict[str, float] = {}
    made: dict[str, Any] = {}
    for phase, stages in PHASES.items():
        before = Counter(requests or {})
        started = time.perf_counter()
        run_job(spec.model_copy(update={"stages": stages}))
        seconds[phase] = round(time.perf_counter() - started, 2)
        if requests is not None:
            delta = Counter(requests)
            delta.subtract(before)
            made[phase.removesuffix("_s")] = {"total": sum(delta.values()), **dict(sorted((+delta).items()))}
    return seconds, made


def _read_rate(paths: list[str], read: Callable[[str], bytes], threads: int = 1) -> float:
    """Images per second: read and fully decode every path."""
    from PIL import Image

    def one(path: str) -> None:
        with Image.open(io.BytesIO(read(path))) as image:
            image.load()

    started = time.perf_counter()
    if threads == 1:
        for path in paths:
            one(path)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, paths))
    return round(len(paths) / (time.perf_counter() - started), 1)


def _image_reads(local_root: Path, s3_root: str, limit: int = 1000) -> dict[str, float]:
    files = sorted(rel for rel, _ in storage.list_files(local_root / "images"))[:limit]
    local = [str(local_root / "images" / f) for f in files]
    remote = [f"{s3_root}/images/{f}" for f in files]
    return {
        "images": len(files),
        "direct_local_per_s": _read_rate(local, lambda p: Path(p).read_bytes()),
        "storage_local_per_s": _read_rate(local, storage.read_bytes),
        "storage_s3_per_s": _read_rate(remote, storage.read_bytes),
        "storage_s3_16_in_flight_per_s": _read_rate(remote, storage.read_bytes, threads=16),
    }


def bench_storage(out: Path) -> dict[str, Any]:
    import boto3

    import ray
    from geomoe.core.data.synthgeo import generate

    data = out / "data" / "synthgeo-storage"
    summary = generate(data, BENCH_SYNTH)
    work = out / "work"
    storage.delete(work)
    requests: Counter[str] = Counter()
    with s3_server(requests) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        s3_data = "s3://bench/datasets/geotext"
        started = time.perf_counter()
        ownership.upload_dir(data / "geotext", s3_data, ownership.Claim("bench upload"))
        upload_s = time.perf_counter() - started
        # The first run pays for Ray's start and the tiny models' build: the comparison is between the next two.
        cold, _ = _timed_job(_job(str(data / "geotext"), str(work / "local-cold"), work / "models"))
        on_s3, s3_requests = _timed_job(_job(s3_data, "s3://bench/runs", work / "models"), requests)
        local, _ = _timed_job(_job(str(data / "geotext"), str(work / "local"), work / "models"))
        ray.shutdown()
        images = storage.read_json("s3://bench/runs/prepared/manifest.json")["images"]
        reads = _image_reads(data / "geotext", s3_data)
    ratio = {k: round(on_s3[k] / local[k], 2) for k in local}
    source_images = len(storage.list_files(data / "geotext" / "images"))
    return {
        "benchmark": "storage",
        "synth": BENCH_SYNTH.model_dump(),
        "upload_dataset_s": round(upload_s, 2),
        "local_disk_first_run": cold,
        "local_disk": local,
        "s3_loopback": on_s3,
        "s3_over_local_time": ratio,
        "s3_requests": s3_requests,
        "dataset": {"source_images": source_images, "pairs": summary["geotext"], "image_table": images},
        "image_reads": reads,
        "summary": f"storage: prepare {ratio['prepare_s']}x and one epoch + eval {ratio['train_epoch_and_eval_s']}x "
        f"the local time with data and outputs on S3 (loopback); S3 requests: prepare "
        f"{s3_requests['prepare']['total']}, one epoch + eval {s3_requests['train_epoch_and_eval']['total']} "
        f"({source_images} source images, {images['shards']} image shards); image reads/s: direct "
        f"{reads['direct_local_per_s']}, storage layer local {reads['storage_local_per_s']}, S3 "
        f"{reads['storage_s3_per_s']} (16 in flight: {reads['storage_s3_16_in_flight_per_s']})",
    }
