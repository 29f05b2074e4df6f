"""The tests' local Ray cluster (imported by module name, like tiny_jobs): tests/ray runs on it for the whole
session; tests/cluster sets it aside while its multi-node cluster runs and starts it again afterwards, so the two
folders run in either order."""

from __future__ import annotations


def use_local_cluster_settings() -> None:
    """The environment a job's local cluster runs with (geomoe.on_ray.ray_env.LOCAL_CLUSTER_ENV), for every cluster the
    tests start: its raylets and Train controllers read it."""
    import os

    from geomoe.on_ray.ray_env import LOCAL_CLUSTER_ENV

    for name, value in LOCAL_CLUSTER_ENV.items():
        os.environ.setdefault(name, value)


def start_local_ray() -> None:
    """A new cluster of this process's own: ``address="local"`` never joins RAY_ADDRESS or a cluster a
    ``ray start`` on this machine left behind (settings that avoid 2-core deadlocks; REFERENCE.md sec. 6). Its
    workers inherit this process's environment, so the S3 server's variables must be set first."""
    import ray

    use_local_cluster_settings()
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=500_000_000, log_to_driver=False)
