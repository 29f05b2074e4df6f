"""A closed-loop HTTP load generator (no Ray): ``concurrency`` clients, each sending its next request as soon as
the last one is answered, for ``seconds``. Reports throughput, latency percentiles and failures by cause."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np


def drive(
    url: str,
    body: Callable[[int], dict[str, Any]],
    concurrency: int,
    seconds: float,
    token: str | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """POST ``body(i)`` (i: the request's number) to ``url`` from ``concurrency`` clients for ``seconds`` (or
    until ``stop`` is set). A request fails on a non-2xx status or a connection error; every failure is counted."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            with lock:
                number = next(counter)
            started = time.perf_counter()
            try:
                connection.request("POST", parts.path or "/", json.dumps(body(number)), headers)
                response = connection.getresponse()
                response.read()
                cause = None if 200 <= response.status < 300 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as err:
                cause = type(err).__name__
                connection.close()  # reconnects on the next request
            with lock:
                if cause is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[cause] += 1
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return summary(latencies, failures, time.perf_counter() - started, concurrency)


def summary(latencies: list[float], failures: Counter[str], elapsed: float, concurrency: int) -> dict[str, Any]:
    total = len(latencies) + sum(failures.values())
    ms = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "failed": sum(failures.values()),
        "failed_fraction": round(sum(failures.values()) / max(total, 1), 5),
        "failures": dict(failures),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }
