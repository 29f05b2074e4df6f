from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_cluster(s3_server: str) -> Iterator[None]:
    """One local Ray cluster for the whole session (settings that avoid 2-core deadlocks; REFERENCE.md sec. 6).
    The S3 server starts first, so the cluster's workers inherit its endpoint and credentials variables."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=500_000_000, log_to_driver=False)
    yield
    ray.shutdown()
