"""A lease on a run folder, so that two runs of one job (same name, same output root) never write into it at once.

The lease is a small JSON file or object, ``<run>/run.lock``: who holds it (user, host, pid), since when, and
until when. The holder renews it from a background thread every quarter of its time to live; a run that crashed
stops renewing, so its lease lapses after at most ``ttl`` seconds and the next run takes the folder over (at once
when the holder ran on the same machine and its process is gone). A run that finds a live lease refuses to start,
naming the holder.

Taking a lease is atomic on a local or shared file system (``O_EXCL``). Object stores reached through pyarrow have
no create-if-absent, so there the taker writes its record, waits ``settle`` seconds (longer than a rival's usual gap
between its read and its write: one GET and one PUT) and reads it back: of two runs that started together, the one
whose record was overwritten sees the other's and refuses. Taking over a lapsed lease uses the same check anywhere.

A rival slower than ``settle`` (its write lands after the holder's check) overwrites the holder's record and holds
the lease itself. The holder finds that out at its next check: it checks again after ``settle``, then at doubling
intervals up to ``ttl / 4``. A run that finds its lease taken, or cannot renew it before it lapses, has lost it and
stops: ``held`` raises RunLockedError in the run's main thread (it is interrupted), and ``Lease.ensure_held``
raises it where a job checks between stages. So there is one holder, and only briefly two writers.
"""

from __future__ import annotations

import _thread
import getpass
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from geomoe.core import storage
from geomoe.core.errors import RunLockedError

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"
TTL_S = 120.0
SETTLE_S = 2.0


@dataclass
class Lease:
    location: str
    record: dict[str, Any]
    ttl: float
    settle: float = SETTLE_S
    stopped: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    lost_why: str = ""
    guard: threading.Lock = field(default_factory=threading.Lock)  # the renewer interrupts only while not stopped

    def lost_error(self) -> RunLockedError:
        return RunLockedError(
            f"{storage.redact(self.location)}: this run lost its lease ({self.lost_why}) and stopped, so that two "
            f"runs never write one output folder; its outputs so far may be mixed with the other run's"
        )

    def ensure_held(self) -> None:
        """Raise RunLockedError if this run has lost its lease (a job checks before each stage)."""
        if self.lost.is_set():
            raise self.lost_error()

    def stop_renewing(self) -> None:
        with self.guard:
            self.stopped.set()

    def renew(self) -> bool:
        """Push the expiry forward; False (and a warning) if another run has taken the lease meanwhile."""
        current = _read(self.location)
        if current is None or current.get("token") != self.record["token"]:
            log.warning("%s: the run lease was taken by %s", storage.redact(self.location), _holder(current))
            return False
        renewed = self.record | {"expires": time.time() + self.ttl}
        storage.write_bytes_atomic(self.location, json.dumps(renewed).encode())
        self.record = renewed  # only once written: a failed renewal leaves the old expiry, which may lapse
        return True

    def release(self) -> None:
        """Delete the record if it is still this run's (never another run's)."""
        self.stop_renewing()
        if self.lost.is_set():
            return
        current = _read(self.location)
        if current is not None and current.get("token") == self.record["token"]:
            storage.delete(self.location)
        elif current is not None:  # taken since the last check: the block's end reports it
            self.lost_why = f"taken by {_holder(current)}"
            self.lost.set()


def acquire(location: str, ttl: float = TTL_S, settle: float = SETTLE_S) -> Lease:
    """Take the lease at ``location``, or raise RunLockedError naming the run that holds it."""
    _refuse_if_held(location, _read(location))
    now = time.time()
    record = {
        "token": uuid.uuid4().hex,
        "holder": _who(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "expires": now + ttl,
    }
    data = json.dumps(record).encode()
    if storage.is_local(location) and not storage.exists(location):
        if not _create_exclusive(location, data):
            _refuse_if_held(location, _read(location), lost_race=True)
        return Lease(location, record, ttl, settle)
    if storage.is_local(location):  # created by a rival since the first read? then it is held, not lapsed
        _refuse_if_held(location, _read(location))
    storage.write_bytes_atomic(location, data)  # a lapsed lease, or an object store: write, then verify
    time.sleep(settle)
    current = _read(location)
    if current is None or current.get("token") != record["token"]:
        _refuse_if_held(location, current or {}, lost_race=True)
    return Lease(location, record, ttl, settle)


@contextmanager
def held(location: str, ttl: float = TTL_S, settle: float = SETTLE_S) -> Iterator[Lease]:
    """Hold the lease while the block runs (renewed in the background), released at its end, failed or not. A lease
    lost meanwhile stops the block with RunLockedError: in the main thread at once (the renewer interrupts it),
    elsewhere at the block's next ``ensure_held``, and at its end in any case."""
    lease = acquire(location, ttl, settle)
    interrupt = threading.current_thread() is threading.main_thread()
    # the interruption is a SIGINT: Python's own handler raises it as KeyboardInterrupt (a handler that Ray Tune
    # left behind would swallow it); Ray Train installs its own while it trains, and a lost lease then ends the run
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if interrupt else None
    renewer = threading.Thread(target=_keep_renewing, args=(lease, interrupt), name="geomoe-lease", daemon=True)
    renewer.start()
    try:
        try:
            yield lease
        finally:  # the renewer stops before the record goes: it can neither rewrite it nor interrupt after this
            lease.stop_renewing()
            renewer.join(timeout=5)
            if previous is not None:  # None: a handler not installed from Python, nothing to put back
                signal.signal(signal.SIGINT, previous)
    except BaseException as err:  # the renewer's interruption (or what a stage made of it), or the block's error
        if lease.lost.is_set():
            raise lease.lost_error() from (None if isinstance(err, KeyboardInterrupt) else err)
        raise  # a user's Ctrl-C, a failed stage
    finally:
        lease.release()
    lease.ensure_held()


def _create_exclusive(location: str, data: bytes) -> bool:
    """Create a local file only if none exists, atomically (O_EXCL): False if one does."""
    path = storage.resolve(location).path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def _keep_renewing(lease: Lease, interrupt_main: bool) -> None:
    """Check and renew: after ``settle``, then at doubling intervals up to ``ttl / 4`` (a rival's late write shows
    within seconds); mark the lease lost, and interrupt the main thread, once it is taken or has lapsed."""
    beat = max(0.05, min(lease.settle, lease.ttl / 4))
    while not lease.stopped.wait(beat):
        beat = max(0.05, min(2 * beat, lease.ttl / 4))
        try:
            if lease.renew():
                continue
            why = f"taken by {_holder(_read(lease.location))}"
        except Exception as err:  # a storage hiccup: try again while the lease outlives the next beat
            log.warning("%s: renewing the run lease failed: %s", storage.redact(lease.location), err)
            if time.time() + beat < float(lease.record["expires"]):
                continue
            why = f"it lapsed: renewing failed ({err})"
        with lease.guard:
            lease.lost_why = why
            lease.lost.set()
            if interrupt_main and not lease.stopped.is_set():  # once stopped, the block's end checks ``lost``
                _thread.interrupt_main()  # SIGINT's handler: KeyboardInterrupt, turned into RunLockedError by held
        return


def _refuse_if_held(location: str, current: dict[str, Any] | None, lost_race: bool = False) -> None:
    if current is None:
        return
    expires = float(current.get("expires", 0))
    if not lost_race and (expires <= time.time() or _died_here(current)):
        log.warning(
            "%s: taking over the lease of %s (lapsed, or that process has ended)",
            storage.redact(location),
            _holder(current),
        )
        return
    until = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    raise RunLockedError(
        f"{storage.redact(location)}: another run of this job is using its output folder: {_holder(current)}; "
        f"its lease runs until {until} and is renewed while it runs. Wait for it, or give this run another name "
        f"(--set name=...) or output_root. If that run is gone, the lease lapses by then (or delete the file)."
    )


def _died_here(record: dict[str, Any]) -> bool:
    """The holder ran on this machine and its process is gone (a crash, a killed trial): no need to wait for the
    lease to lapse."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _read(location: str) -> dict[str, Any] | None:
    """The lease record, None if there is none. A file that is not a lease record (half written, damaged) counts
    as held by an unknown run, so that it is never overwritten unseen."""
    try:
        raw = storage.read_json_if_exists(location)
    except (ValueError, UnicodeDecodeError):
        raw = "unreadable"
    if raw is None:
        return None
    if not isinstance(raw, dict) or "token" not in raw:
        return {"holder": f"unknown (the file is not a lease record: {str(raw)[:60]!r})", "expires": time.time() + 1}
    return raw


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = str(os.getuid())
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{user}@{socket.gethostname()} pid {os.getpid()}, started {started}"


def _holder(record: dict[str, Any] | None) -> str:
    return "nobody" if record is None else str(record.get("holder", "unknown"))
