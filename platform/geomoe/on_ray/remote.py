"""``geomoe submit`` and ``geomoe job``: run a job or a sweep spec on a Ray cluster through Ray Jobs, and list,
follow or stop what was submitted (Ray layer).

The spec is validated here first, so a bad spec fails before anything is uploaded. The working directory (the
code, jobs/, search_spaces/; never data, runs or virtualenvs) goes with the job as its runtime env, and the
entrypoint is ``geomoe run`` (a job) or ``geomoe sweep`` (a sweep) on the cluster, where it joins the cluster
through RAY_ADDRESS.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geomoe.core.config import load_job, load_yaml
from geomoe.core.errors import GeomoeError

EXCLUDES = [".git", ".venv", "data", "runs", "bench_results", "**/__pycache__", "*.egg-info"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# Where the job's data and outputs live, forwarded so the spec resolves on the cluster as it did here.
# Credentials are never forwarded: the cluster has its own (an instance profile, a Kubernetes secret).
FORWARDED = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("GEOMOE_") or k in FORWARDED}


class RemoteError(GeomoeError):
    """The cluster cannot be reached, or does not know the job asked for."""


def is_sweep(path: Path) -> bool:
    """A sweep spec (search_spaces/*.yaml) names a base job; a job spec does not."""
    raw = load_yaml(path)
    return isinstance(raw, dict) and "base" in raw


def entrypoint_of(path: Path, relative: Path, overrides: list[str], quickstart: bool = False) -> tuple[str, str]:
    """(the command the cluster runs, the spec's name) for a job or a sweep spec, validated here first."""
    sets = [f"--set {shlex.quote(o)}" for o in overrides]
    if is_sweep(path):
        from geomoe.core.sweep import load_sweep

        sweep, _ = load_sweep(path, quickstart, overrides)
        flags = ["--quickstart"] if quickstart else []
        return " ".join(["geomoe", "sweep", shlex.quote(str(relative)), *flags, *sets]), sweep.name
    if quickstart:
        raise RemoteError(f"{relative}: --quickstart is for a sweep spec; this is a job spec")
    return " ".join(["geomoe", "run", shlex.quote(str(relative)), *sets]), load_job(str(path), overrides).name


def cluster_address(address: str | None) -> str:
    """``--address``, else RAY_ADDRESS (Ray's own convention), else an error saying how to name one."""
    found = address or os.environ.get("RAY_ADDRESS")
    if not found:
        raise RemoteError("no cluster named: pass --address http://<head>:8265 or set RAY_ADDRESS")
    return found


def client(address: str) -> Any:
    """A JobSubmissionClient for the cluster's dashboard; RemoteError in one line when it cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError; ValueError for a malformed address; Ray's own RuntimeErrors
        reason = _first_line(err)
        raise RemoteError(f"{address}: cannot reach the cluster's dashboard ({reason}); check --address") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def submit(
    spec: str,
    address: str | None,
    overrides: list[str],
    working_dir: str = ".",
    wait: bool = False,
    timeout_s: float = 3600.0,
    quickstart: bool = False,
) -> dict[str, Any]:
    """Submit ``spec`` (a job or a sweep, a path relative to ``working_dir``); with ``wait``, follow it to the end
    and return its status and the tail of its logs."""
    root = Path(working_dir).resolve()
    path = Path(spec)
    relative = path.resolve().relative_to(root) if path.is_absolute() else path
    entrypoint, name = entrypoint_of(path if path.is_absolute() else root / path, relative, overrides, quickstart)
    address = cluster_address(address)
    jobs = client(address)
    with _one_line(address):
        job_id = jobs.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": forwarded_env()},
            metadata={"geomoe_job": name},
        )
    result: dict[str, Any] = {"job_id": job_id, "entrypoint": entrypoint, "address": address}
    if not wait:
        return result | {"status": str(jobs.get_job_status(job_id))}
    deadline = time.monotonic() + timeout_s
    status = str(jobs.get_job_status(job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2.0)
        status = str(jobs.get_job_status(job_id))
    return result | {"status": status, "logs": jobs.get_job_logs(job_id)[-20_000:]}


@contextmanager
def _one_line(address: str) -> Iterator[None]:
    """A Ray job client call's failure (the dashboard gone, a refused upload) as one line."""
    try:
        yield
    except RemoteError:
        raise
    except Exception as err:  # Ray's client raises RuntimeError, ConnectionError and more
        raise RemoteError(f"{address}: {_first_line(err)}") from None


def list_jobs(address: str | None) -> list[dict[str, Any]]:
    """Every job the cluster knows, oldest first: id, status, geomoe spec name, entrypoint."""
    rows = [
        {
            "job_id": job.submission_id or job.job_id,
            "status": str(job.status),
            "name": (job.metadata or {}).get("geomoe_job", ""),
            "entrypoint": job.entrypoint,
            "start_time": job.start_time or 0,
        }
        for job in client(cluster_address(address)).list_jobs()
    ]
    return sorted(rows, key=lambda r: r["start_time"])


def _known(address: str | None, job_id: str) -> tuple[Any, Any]:
    """(the client, the job's info); RemoteError when the cluster does not know the job."""
    jobs = client(cluster_address(address))
    try:
        return jobs, jobs.get_job_info(job_id)
    except RuntimeError as err:  # "Request failed with status code 404: Job ... does not exist."
        raise RemoteError(f"job {job_id}: not known to this cluster ({str(err).splitlines()[0]})") from None


def job_status(address: str | None, job_id: str) -> dict[str, Any]:
    _, info = _known(address, job_id)
    return {"job_id": job_id, "status": str(info.status), "message": info.message or ""}


def job_logs(address: str | None, job_id: str) -> str:
    jobs, _ = _known(address, job_id)
    return str(jobs.get_job_logs(job_id))


def stop_job(address: str | None, job_id: str) -> dict[str, Any]:
    """Ask the cluster to stop the job; ``stopped`` is False when it had already ended."""
    jobs, _ = _known(address, job_id)
    return {"job_id": job_id, "stopped": bool(jobs.stop_job(job_id))}
