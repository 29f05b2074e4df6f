"""Starting or joining a Ray cluster from a job spec (Ray layer)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geomoe.core import storage
from geomoe.core.config import JobSpec, ResourcesSpec
from geomoe.core.errors import SpecError
from geomoe.core.progress import StageBar

log = logging.getLogger(__name__)


@contextmanager
def sigint_kept() -> Iterator[None]:
    """Put back the SIGINT handler after the block. Ray Train's ``fit()`` and Tune's ``Tuner.fit()`` in the main
    thread install their own (a Ctrl-C aborts the run) and leave it there: afterwards a Ctrl-C, or a lost run
    lease's interruption, in a later stage of the job only asked a finished run to stop, and the job went on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def worker_device() -> str:
    """Where a model held by this process belongs: ``cuda`` in an actor or task Ray gave a GPU (``num_gpus``), else
    ``cpu``. A process without a GPU of its own may still see the node's GPUs, which belong to other actors; the
    driver and a process outside Ray get ``cpu``. Every model-holding actor, task and replica places by this."""
    import ray

    return "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"


# A local cluster (a laptop, the demo, the tests) runs jobs whose stages follow each other within seconds, and
# no cloud provider preempts its one node. Measured on the 2-core demo (one run each): 24 task worker processes
# started and killed again (each paying Ray's and the stage's imports) and 6 preemption watchers (2.7 CPU-s
# each), against 11 and none with these settings; the demo 391 s -> 364 s. Set in the environment to override.
LOCAL_CLUSTER_ENV = {
    "RAY_idle_worker_killing_time_threshold_ms": "60000",  # keep idle workers a minute (Ray: 1 s)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # Train's spot-reclaim poller: one actor per fit
    # A worker's ray.train.report waits in a queue of one until Train's controller polls (Ray: every 2 s), so an
    # epoch shorter than that waited for the poll; and a finished fit is noticed at the next one. Measured on the
    # toy family's job (2 fits x 3 epochs, 2 cores): its train stage 33.5 -> 25.2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}


_STARTED_HERE: list[bool] = []  # this process started its local cluster (its session logs are this job's)


def ensure_ray(resources: ResourcesSpec, dashboard: bool = False) -> None:
    """Join ``resources.address`` or start a local cluster; reuse one already started in this process.

    ``dashboard``: Tune running Train V2 trials on one node needs it; without it a trial's Train placement group
    was seen to leak into the next trial and hang it (docs/ray-on-small-machines.md)."""
    import ray
    from geomoe.core import logs

    if ray.is_initialized():
        return
    quiet = logs.quiet()  # a job's workers print to Ray's session logs (copied to <run>/logs), not here
    # New local clusters in Ray 2.60 turn token auth on; a local test or demo cluster needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Inside a Ray job (geomoe submit) RAY_ADDRESS names the job's cluster: join it, whatever the spec says.
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not quiet)
    else:
        # More logical CPUs than cores avoids the 2-core deadlock of a trial holding one CPU while its
        # workers wait for the rest (docs/ray-on-small-machines.md).
        num_cpus = resources.num_cpus or max(4, os.cpu_count() or 1)
        for name, value in LOCAL_CLUSTER_ENV.items():  # read by the raylet and Train's controllers it starts
            os.environ.setdefault(name, value)
        # address="local": always a new cluster, never one a `ray start` on this machine left running (ray.init()
        # would join it, and refuse num_cpus)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            logging_level=logging.WARNING,
            log_to_driver=not quiet,
        )
        _STARTED_HERE.append(True)
    if quiet:
        _quiet_driver()
    log.info("Ray cluster resources: %s", ray.cluster_resources())


def _quiet_driver() -> None:
    """Ray Data's progress bars and execution logs off the console (into the run's log file): the job shows a
    bar per stage instead."""
    from ray.data import DataContext

    from geomoe.core import logs

    DataContext.get_current().enable_progress_bars = False
    logs.capture_console("ray", "ray.data")


def session_logs() -> Path | None:
    """The log folder of the local cluster this process started; None on a cluster it joined (whose session
    logs hold every job's: the dashboard and ``ray logs`` show them there)."""
    import ray

    if not _STARTED_HERE:
        return None
    node = getattr(ray._private.worker, "_global_node", None)  # no public API names the folder
    folder = getattr(node, "get_logs_dir_path", lambda: None)() if node is not None else None
    return Path(folder) if folder else None


def in_order(dataset: Any) -> Any:
    """``dataset`` with its blocks handed on in the plan's order. Ray Data's default passes blocks on as tasks
    finish, so a training input's batches (and, through the shuffle buffer and the split across workers, the
    trained weights) changed from run to run with the same seed: the demo's stage-2 R@10 was 42.3, 36.6 and 35.1
    in three runs of one day."""
    dataset.context.execution_options.preserve_order = True
    return dataset


def reshuffled_each_epoch(dataset: Any, seed: int) -> Any:
    """``dataset``'s rows in a fresh permutation at every execution, and the same sequence of permutations from
    the same ``seed`` (Ray Data's RandomSeedConfig: the seed with the execution's index). Ray Train runs a training
    dataset once per epoch, so each epoch's batches, and a contrastive loss's in-batch negatives, are drawn anew;
    with a plain integer seed every epoch would repeat the first one's order. An all-to-all: give it the rows
    before they are decoded (ids and captions), not pixels."""
    from ray.data import RandomSeedConfig

    return dataset.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


def decoded_rows(table: Any, decode: Any, batch_size: int, materialize: bool, reshuffle_seed: int | None = None) -> Any:
    """``table``'s rows as a Ray Dataset decoded by ``decode`` (a ``map_batches`` callable, ``batch_size`` rows at
    a time), in the plan's order; decoded once into the object store with ``materialize``; with ``reshuffle_seed``
    (training inputs) in a new order every epoch: the undecoded rows are shuffled, so no pixels move in the
    shuffle, or with ``materialize`` the decoded ones held there."""
    import ray.data

    blocks = max(1, min(table.num_rows // batch_size, 8))
    step = -(-table.num_rows // blocks)
    ds: Any = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    if reshuffle_seed is not None and not materialize:
        ds = reshuffled_each_epoch(ds, reshuffle_seed)
    ds = in_order(ds.map_batches(decode, batch_format="numpy", batch_size=batch_size, num_cpus=0.5))
    if not materialize:
        return ds
    ds = ds.materialize()
    return ds if reshuffle_seed is None else in_order(reshuffled_each_epoch(ds, reshuffle_seed))


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_storage(spec: JobSpec) -> None:
    """Stop before any work when a multi-node cluster would run a job whose data or outputs sit on one disk.

    Ray Train and Tune need storage every node reaches (Ray removed syncing to the head node in 2.7), and a
    worker on one machine cannot read the Parquet or images another machine wrote to its own disk."""
    nodes = alive_nodes()
    if nodes < 2:
        return
    for key, location in spec.locations().items():
        if not spec.storage.is_shared(location):
            raise SpecError(
                f"job {spec.name}",
                key,
                f"{storage.redact(location)} is a local path, and this Ray cluster has {nodes} nodes that do not "
                "share a disk: workers on other machines could not read or write it. Use a URI "
                "(s3://bucket/prefix, gs://...), or, if the path lies on a mount every node has (NFS, EFS), "
                "declare it: storage.shared_mounts: [<mount prefix>] (or storage.shared: true)",
            )


PROGRESS_BOARD = "geomoe-progress"  # a named actor: training workers tick it, the driver's bar shows its count


class _Board:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, units: int = 1) -> None:
        self.done += units

    def count(self) -> int:
        return self.done


@contextmanager
def progress_board(bar: StageBar, poll_s: float = 0.5) -> Iterator[None]:
    """While the block runs, the epochs the training workers finish (``tick_progress``) advance ``bar``: the
    workers run in other processes (on other nodes), so they count on an actor that a driver thread reads."""
    import ray

    board = _named_board()
    stop = threading.Event()

    def show() -> None:
        while not stop.wait(poll_s):
            try:
                bar.show(ray.get(board.count.remote(), timeout=10))
            except (ray.exceptions.RayError, TimeoutError):  # the bar stops moving; the job goes on
                return

    watcher = threading.Thread(target=show, name="progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        ray.kill(board)


def _named_board(wait_s: float = 10.0) -> Any:
    """The board under its name; a previous job's board in this process may still be releasing the name."""
    import time

    import ray

    actor: Any = ray.remote(num_cpus=0)(_Board)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return actor.options(name=PROGRESS_BOARD).remote()
        except ValueError:  # "the name is already taken": the killed board is not dead yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def tick_progress(units: int = 1) -> None:
    """From a training worker: ``units`` more epochs done, on the job's bar if a job shows one (not in sweeps)."""
    import ray

    try:
        board = ray.get_actor(PROGRESS_BOARD)
    except ValueError:
        return
    board.advance.remote(units)
