"""``geomoe submit`` against a real local cluster with a dashboard (``ray start --head``): the job spec runs on
the cluster through Ray Jobs, with the working directory uploaded; a bad spec fails before anything is sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ports import start_on_a_free_port, stop_tree, unused_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Its own TMPDIR: `ray start` records its address in $TMPDIR/ray/ray_current_cluster, and a later ray.init()
    # anywhere on this machine would join this (by then stopped) cluster instead of starting its own.
    temp = tempfile.mkdtemp(prefix="geomoe-submit-", dir="/tmp")  # short: Unix socket paths are limited
    env |= {"PATH": f"{bin_dir}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled", "TMPDIR": temp}

    def start(dashboard: int) -> subprocess.Popen[bytes]:
        ports = {"--port": unused_port(), "--dashboard-port": dashboard}
        for flag in ("ray-client-server", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export"):
            ports[f"--{flag}-port"] = unused_port()
        for flag in ("runtime-env-agent", "node-manager", "object-manager"):
            ports[f"--{flag}-port"] = unused_port()
        command = [str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--num-cpus=4", "--include-dashboard=true"]
        command += ["--dashboard-host=127.0.0.1", *[f"{k}={v}" for k, v in ports.items()]]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(head: subprocess.Popen[bytes]) -> None:
        stop_tree(head.pid, seconds=60)  # --block: the head's processes are its children
        head.wait(timeout=60)

    # up once the dashboard of this head (not another cluster's on a port it lost) answers
    head, dashboard = start_on_a_free_port(start, lambda head: head.pid, stop, seconds=120)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(address + "/api/version", timeout=2):
                break
        except OSError:
            time.sleep(1)
    try:
        yield address
    finally:
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def geomoe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "geomoe.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_submit_runs_the_job_on_the_cluster(cluster: str) -> None:
    small = ["stages=[synth]", "data.root=data/synthgeo-submit/geotext",
             "data.synthesize.output_dir=data/synthgeo-submit", "data.synthesize.train_buildings=2",
             "data.synthesize.test_buildings=1", "data.synthesize.localization_train=1"]  # fmt: skip
    done = geomoe("submit", "jobs/quickstart.yaml", "--address", cluster, "--wait", *[f"--set={s}" for s in small])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"status": "SUCCEEDED"' in done.stdout and "synthgeo:" in done.stdout  # the job's own output
    assert not (REPO / "data" / "synthgeo-submit").exists()  # it ran in the uploaded copy, on the cluster
    # the submitted job, as `geomoe job` sees it
    job_id = json.loads(done.stdout.strip().splitlines()[-1])["job_id"]
    listed = geomoe("job", "list", "--address", cluster)
    assert listed.returncode == 0 and any(
        line.startswith(job_id) and "SUCCEEDED" in line and "quickstart" in line for line in listed.stdout.splitlines()
    )
    status = geomoe("job", "status", job_id, "--address", cluster)
    assert json.loads(status.stdout)["status"] == "SUCCEEDED"
    assert "synthgeo:" in geomoe("job", "logs", job_id, "--address", cluster).stdout
    assert json.loads(geomoe("job", "stop", job_id, "--address", cluster).stdout) == {
        "job_id": job_id,
        "stopped": False,
    }
    unknown = geomoe("job", "status", "raysubmit_nosuchjob", "--address", cluster)
    assert unknown.returncode == 2 and "job raysubmit_nosuchjob: not known to this cluster" in unknown.stderr


def test_submit_refuses_a_bad_spec_before_uploading(cluster: str) -> None:
    done = geomoe("submit", "jobs/quickstart.yaml", "--address", cluster, "--set", "train.batch_size=-1")
    assert done.returncode == 2 and "quickstart.yaml: train.batch_size:" in done.stderr
