"""`make mlflow-ui` serves MLflow's web UI on a store geomoe tracked into: the landing page, its script bundle,
and the run's metrics through the UI's own API."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_make_mlflow_ui_serves_the_ui_on_the_tracked_store(tmp_path: Path) -> None:
    from geomoe import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(store, "ui-check", str(tmp_path), {"geomoe.family": "pe_moe"})
    tracking.log_results(run, {"model.R@1": 12.5}, "a table", {"ok": True})
    port = _free_port()
    command = ["make", "-s", "mlflow-ui", f"MLFLOW_STORE={store}", f"MLFLOW_PORT={port}"]
    server = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status, page = time.monotonic() + 120, 0, b""
        while time.monotonic() < deadline and status != 200 and server.poll() is None:
            time.sleep(1.0)
            status, page = _get(f"{base}/")
        assert status == 200, f"no UI on {base}: {server.stdout.read().decode()[-2000:] if server.poll() else ''}"
        assert b"<title>MLflow</title>" in page and b"Unable to display MLflow UI" not in page
        bundle = re.search(rb'src="\.?/?(static-files/static/js/[^"]+\.js)"', page)
        assert bundle is not None and _get(f"{base}/{bundle.group(1).decode()}")[0] == 200  # the app itself loads
        query = json.dumps({"experiment_ids": [run.experiment_id]}).encode()
        request = urllib.request.Request(
            f"{base}/ajax-api/2.0/mlflow/runs/search", query, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert metrics == {"model.R_at_1": 12.5}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
