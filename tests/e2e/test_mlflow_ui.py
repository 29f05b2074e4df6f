"""`make mlflow-ui` serves MLflow's web UI on a store geomoe tracked into: the landing page, its script bundle,
and the run's metrics through the UI's own API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ports import start_on_a_free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def test_make_mlflow_ui_serves_the_ui_on_the_tracked_store(tmp_path: Path) -> None:
    from geomoe.core import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(store, "ui-check", str(tmp_path), {"geomoe.family": "pe_moe"})
    tracking.log_results(run, {"model.R@1": 12.5}, "a table", {"ok": True})
    log = tmp_path / "ui.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        command = ["make", "-s", "mlflow-ui", f"MLFLOW_STORE={store}", f"MLFLOW_PORT={port}"]
        with log.open("ab") as out:
            return subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)

    try:  # up once `make mlflow-ui`'s own server listens on the port
        server, port = start_on_a_free_port(start, lambda server: server.pid, stop, seconds=120)
    except RuntimeError as err:
        raise AssertionError(f"no UI: {log.read_text()[-2000:]}") from err
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status, page = time.monotonic() + 60, 0, b""
        while time.monotonic() < deadline and status != 200 and server.poll() is None:
            status, page = _get(f"{base}/")
            time.sleep(0 if status == 200 else 1.0)
        assert status == 200, f"no UI on {base}: {log.read_text()[-2000:]}"
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
        stop(server)


def stop(server: subprocess.Popen[bytes]) -> None:
    """The make, its python and the UI's server processes: the session `start_new_session` gave them."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
