"""How a generation engine runs in a Ray Data ``map_batches``: an actor pool of ``engine.concurrency`` model
holders, one GPU each on GPU engines (and no CPU reservation then), ``engine.batch_size`` x 4 rows per call."""

from __future__ import annotations

from typing import Any

from geomoe.core.config import EngineSpec


def engine_pool_options(engine: EngineSpec) -> dict[str, Any]:
    import ray.data

    return {
        "batch_size": engine.batch_size * 4,
        "compute": ray.data.ActorPoolStrategy(size=engine.concurrency),
        "num_cpus": 0 if engine.use_gpu else 1,
        "num_gpus": 1 if engine.use_gpu else 0,
    }
