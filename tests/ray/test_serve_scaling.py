"""The retriever under load on the local cluster: the query encoder autoscales above its minimum and back down,
and killing one of its replicas, or the Serve controller, mid-load costs (almost) no request."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geomoe.on_ray.serving.load import drive
from ports import start_serve
from tiny_jobs import tiny_retriever

URL = ""  # /search of the app: set by ``app``, which starts Serve on a port of its own
QUERIES = ["a drone view of a red roof", "a satellite image of a park", "a street view of a glass tower"]


def body(i: int) -> dict[str, Any]:
    return {"query": QUERIES[i % len(QUERIES)] + f" {i % 7}", "k": 5}


def running_encoders() -> int:
    from ray import serve

    states = serve.status().applications["scaling"].deployments["QueryEncoder"].replica_states
    return int(states.get("RUNNING", 0))


def encoder_actors() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "QueryEncoder" in a["name"]]


def serve_state() -> Any:
    from ray import serve

    return serve.status().applications["scaling"].deployments["QueryEncoder"]


def wait_for(condition: Any, seconds: float) -> bool:
    """Poll ``condition`` every 0.5 s until it holds or ``seconds`` pass; an error (an actor restarting) counts
    as not yet."""
    from ray.exceptions import RayError

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (RayError, KeyError):  # the controller is not back yet, or has not recovered the app yet
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def app(tiny_synth: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:

    from geomoe.on_ray.serving.app import compose
    from ray import serve

    out = tmp_path_factory.mktemp("scaling")
    tiny_retriever(tiny_synth[0], out)
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        # longer than a replica's start (~10 s on 2 busy cores): a shorter delay cancelled the starting replica
        # whenever the ongoing-request metric dipped, and the deployment flapped between 1 and 2 in CI
        "downscale_delay_s": 20,
        "look_back_period_s": 2,
    }
    options = {
        "QueryEncoder": {"autoscaling_config": autoscaling, "max_ongoing_requests": 8},
        "GallerySearch": {"ray_actor_options": {"num_cpus": 0.25}},
        # Serve's default (5) would cap what reaches the encoder at 5 requests, near its upscale target
        "Ingress": {"max_ongoing_requests": 64},
    }
    global URL
    URL = f"{start_serve()}/search"
    serve.run(compose({"index": str(out / "index")}, options=options), name="scaling", route_prefix="/")
    try:
        yield
    finally:
        serve.shutdown()


def test_encoder_scales_up_under_load_survives_a_killed_replica_and_scales_back_down(app: None) -> None:
    """One load: the encoder scales above its minimum; one of its replicas is killed and Serve replaces it while
    under 1% of the requests fail; once the load stops, it scales back down."""
    import ray

    assert running_encoders() == 1
    stop = threading.Event()
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(drive(URL, body, 12, 180.0, stop=stop)))
    load.start()
    replaced = False
    try:
        assert wait_for(lambda: running_encoders() >= 2, 120), ("no upscale under load", serve_state())
        names = encoder_actors()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        # the load goes on until Serve has replaced the replica (a new actor) and runs two again
        replaced = wait_for(lambda: names[0] not in encoder_actors() and running_encoders() >= 2, 120)
    finally:
        stop.set()
        load.join()
    print("load while a replica was killed:", result)
    assert replaced, serve_state()
    assert result["requests"] > 100 and result["failed_fraction"] < 0.01, result
    assert wait_for(lambda: running_encoders() == 1, 90), "no downscale after the load"


def test_the_serve_controller_restarted_under_load_fails_under_one_percent(app: None) -> None:
    """The controller is killed (Ray restarts it; it recovers the applications from Ray's store): requests go
    through the proxy and the replicas, which keep serving meanwhile."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    import ray
    from ray import serve

    def controller_pid() -> int:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return int(ray.get(controller.__ray_call__.remote(lambda self: os.getpid()), timeout=60))

    before = controller_pid()
    stop = threading.Event()
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(drive(URL, body, 8, 180.0, stop=stop)))
    load.start()
    try:
        time.sleep(3)
        ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=False)
        # a new controller process that has recovered the application (not the old one's last answer)
        recovered = wait_for(
            lambda: controller_pid() != before and serve.status().applications["scaling"].status == "RUNNING", 90
        )
        time.sleep(5)  # and the load goes on against the recovered controller
    finally:
        stop.set()
        load.join()
    print("load while the controller restarted:", result)
    assert recovered, serve.status()
    assert result["requests"] > 50 and result["failed_fraction"] < 0.01, result
