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
