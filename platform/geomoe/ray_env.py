"""Starting or joining a Ray cluster from a job spec (Ray layer)."""

from __future__ import annotations

import logging
import os

from geomoe.config import ResourcesSpec

log = logging.getLogger(__name__)


def ensure_ray(resources: ResourcesSpec, dashboard: bool = False) -> None:
    """Join ``resources.address`` or start a local cluster; reuse one already started in this process.

    ``dashboard``: Tune running Train V2 trials on one node needs it; without it a trial's Train placement group
    was seen to leak into the next trial and hang it (REFERENCE.md sec. 6)."""
    import ray

    if ray.is_initialized():
        return
    # New local clusters in Ray 2.60 turn token auth on; a local test or demo cluster needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Inside a Ray job (geomoe submit) RAY_ADDRESS names the job's cluster: join it, whatever the spec says.
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # More logical CPUs than cores avoids the 2-core deadlock of a trial holding one CPU while its
        # workers wait for the rest (REFERENCE.md sec. 6).
        num_cpus = resources.num_cpus or max(4, os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, logging_level=logging.WARNING)
    log.info("Ray cluster resources: %s", ray.cluster_resources())
