from collections.abc import Iterator

import pytest

from local_ray import start_local_ray


@pytest.fixture(scope="session", autouse=True)
def ray_cluster(s3_server: str) -> Iterator[None]:
    """One local Ray cluster for the whole session, started after the S3 server (its workers inherit the
    endpoint and credentials variables)."""
    import ray

    start_local_ray()
    yield
    ray.shutdown()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A Ray Data run with failed requests (the dead-server tests) leaves its executor in a reference cycle through
    the errors' tracebacks, and through it its actors' handles: the actors keep their CPUs until the cycle is
    collected. generate() collects it, but under pytest's log capture the captured records hold the tracebacks
    until the test has ended, and Python's next full collection can be minutes away: the next tests then ran on 1
    of the cluster's 4 CPUs (measured: the refine HTTP test 92 s instead of 21, the Serve module's start 90 s).
    Collect before a test's fixtures (a module's cluster-wide ones included) whenever CPUs are held."""
    import gc

    import ray

    if ray.is_initialized() and ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        gc.collect()
