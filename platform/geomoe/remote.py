"""``geomoe submit``: run a job spec on a Ray cluster through Ray Jobs (Ray layer).

The spec is validated here first, so a bad spec fails before anything is uploaded. The working directory (the
code, jobs/, search_spaces/; never data, runs or virtualenvs) goes with the job as its runtime env, and the
entrypoint is ``geomoe run`` on the cluster, where the job joins the cluster through RAY_ADDRESS.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from geomoe.config import load_job

EXCLUDES = [".git", ".venv", "data", "runs", "bench_results", "**/__pycache__", "*.egg-info"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# Where the job's data and outputs live, forwarded so the spec resolves on the cluster as it did here.
# Credentials are never forwarded: the cluster has its own (an instance profile, a Kubernetes secret).
FORWARDED = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("GEOMOE_") or k in FORWARDED}


def submit(
    job: str,
    address: str,
    overrides: list[str],
    working_dir: str = ".",
    wait: bool = False,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Submit ``job`` (a path relative to ``working_dir``); with ``wait``, follow it to the end and return its
    status and the tail of its logs."""
    from ray.job_submission import JobSubmissionClient

    root = Path(working_dir).resolve()
    path = Path(job)
    spec = load_job(str(path if path.is_absolute() else root / path), overrides)
    relative = path.resolve().relative_to(root) if path.is_absolute() else path
    entrypoint = " ".join(
        ["geomoe", "run", shlex.quote(str(relative)), *[f"--set {shlex.quote(o)}" for o in overrides]]
    )
    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": forwarded_env()},
        metadata={"geomoe_job": spec.name},
    )
    result: dict[str, Any] = {"job_id": job_id, "entrypoint": entrypoint, "address": address}
    if not wait:
        return result | {"status": str(client.get_job_status(job_id))}
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2.0)
        status = str(client.get_job_status(job_id))
    return result | {"status": status, "logs": client.get_job_logs(job_id)[-20_000:]}
