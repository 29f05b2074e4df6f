"""A probe of the servers one copy of the suite starts: the S3 server, the local Ray cluster and Serve (the MLflow
server takes its port as Serve does, through tests/ports.py; it is left out, for time). Not collected by
``pytest tests`` (no test_ prefix); tests/e2e/test_isolation.py runs two copies of it at once, as two copies of
``make test`` on one machine would."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from ports import start_serve


def test_every_server_of_this_copy_is_its_own(s3_bucket: str) -> None:
    import ray
    from geomoe.core import storage
    from ray import serve

    @serve.deployment
    class Where:
        def __call__(self, _: Any) -> dict[str, str]:
            return {"node": ray.get_runtime_context().get_node_id()}

    url = start_serve()
    try:
        serve.run(Where.bind(), name="probe", route_prefix="/")
        with urllib.request.urlopen(url, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["node"] == ray.get_runtime_context().get_node_id()  # this copy's cluster answered
    finally:
        serve.shutdown()
    mine = f"{s3_bucket}/copy.txt"
    storage.write_text_atomic(mine, str(os.getpid()))
    assert storage.read_text(mine) == str(os.getpid())
