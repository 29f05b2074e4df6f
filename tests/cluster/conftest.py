"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: a head and two worker nodes, each a
raylet of its own), with every data and output location on the S3 server of tests/conftest.py.

The nodes share this machine's disk, so only storage that is not a local disk proves a run cluster-ready
(REFERENCE.md sec. 8): every location in these tests is an s3:// URI, except the declared caches (tiny models).
Its cluster is shut down before any other starts; tests/ray's local cluster, if up already, is set aside meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from local_ray import start_local_ray, use_local_cluster_settings
from ports import start_on_a_free_port

TRAINER = "trainer_slot"  # a custom resource only the worker nodes have: the tests' Train workers ask for it


@pytest.fixture(scope="module")
def two_node_cluster(s3_server: str) -> Iterator[object]:
    from ray.cluster_utils import Cluster

    import ray

    local = ray.is_initialized()  # tests/ray's cluster, when that folder ran first: set aside, then restarted
    ray.shutdown()
    use_local_cluster_settings()  # whichever folder runs first
    # The dashboard serves Ray's state API, from which the tests read where the Train workers ran.
    head = {"num_cpus": 2, "object_store_memory": 300_000_000, "include_dashboard": True}

    def start(port: int) -> Cluster:
        return Cluster(initialize_head=True, head_node_args=head | {"dashboard_port": port})

    # its nodes are this process's children: up once one of them holds the dashboard's port
    cluster, _ = start_on_a_free_port(start, owner=lambda _: os.getpid(), stop=lambda c: c.shutdown())
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={TRAINER: 1}, object_store_memory=300_000_000)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if local:
        start_local_ray()
