"""Shared fixtures. No network, no downloads: every dataset here is written by the test itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ports import start_on_a_free_port, stop_tree

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny synthgeo benchmark shared (read-only) by the tests of a session."""
    from geomoe.core.config import SynthSpec
    from geomoe.core.data.synthgeo import generate

    out = tmp_path_factory.mktemp("synth") / "synthgeo"
    spec = SynthSpec(
        train_buildings=4,
        test_buildings=3,
        drone_views=2,
        ground_views=1,
        image_size=32,
        localization_train=3,
        localization_val=2,
        localization_test=2,
        tile_size=64,
        query_size=32,
    )
    return out, generate(out, spec)


@pytest.fixture(scope="session", autouse=True)
def no_outside_cluster() -> Iterator[None]:
    """The tests and the CLI runs they start use only clusters the tests start: a RAY_ADDRESS from the user's shell
    would make every ``geomoe run`` subprocess join that cluster. Put back at the end."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    yield
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP API on 127.0.0.1 (moto's server mode). Our code reaches it only through the standard
    variables (AWS_ENDPOINT_URL and credentials), set here before any Ray cluster starts so workers inherit them."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks the port as it binds
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="geomoe-test", AWS_SECRET_ACCESS_KEY="geomoe-test-secret"
    )
    os.environ["AWS_REGION"] = "us-east-1"
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def make_bucket(endpoint: str, name: str) -> str:
    """Create a bucket through the S3 API; return its s3:// URI."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def new_bucket(s3_server: str) -> Callable[[str], str]:
    """Create a bucket (for module-scoped fixtures, which cannot use the function-scoped ``s3_bucket``)."""
    return lambda name: make_bucket(s3_server, name)


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return make_bucket(s3_server, f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts proxied through the server, as a
    cluster's would be); the tests point MLFLOW_TRACKING_URI at it."""
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow")
    log = (folder / "server.log").open("wb")

    def start(port: int) -> subprocess.Popen[bytes]:
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination"]
        command += [str(folder / "artifacts"), "--workers", "1"]
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(server: subprocess.Popen[bytes]) -> None:
        stop_tree(server.pid)
        server.wait(timeout=30)

    try:
        server, port = start_on_a_free_port(start, lambda s: s.pid, stop)
    except RuntimeError as err:
        raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}") from err
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:  # listening, then answering
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError as err:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(
                    f"mlflow server did not answer: {(folder / 'server.log').read_text()[-2000:]}"
                ) from err
            time.sleep(0.5)
    yield url
    stop(server)
    log.close()
