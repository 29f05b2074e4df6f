from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole session (settings that avoid 2-core deadlocks; REFERENCE.md sec. 6)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=500_000_000, log_to_driver=False)
    yield
    ray.shutdown()
