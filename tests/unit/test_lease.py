"""Run leases: one run per run folder, locally and on object storage (the S3 server on 127.0.0.1); two runs that
start together end with exactly one holder; a crashed run's lease lapses; the CLI's second run refuses before it
writes anything, naming the run that holds the folder."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from geomoe.cli import main
from geomoe.core import lease, ownership, storage
from geomoe.core.errors import RunLockedError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def lock(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    root = str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_bucket")
    return storage.join(root, "runs", "job", lease.LOCK_FILE)


def test_a_held_lease_refuses_a_second_run_naming_the_holder(lock: str) -> None:
    first = lease.acquire(lock, settle=0.2)
    with pytest.raises(RunLockedError, match=rf"another run of this job .* pid {os.getpid()}"):
        lease.acquire(lock, settle=0.2)
    first.release()
    assert not storage.exists(lock)
    lease.acquire(lock, settle=0.2).release()  # free again


def test_two_runs_starting_together_end_with_exactly_one_holder(lock: str) -> None:
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            lease.acquire(lock, settle=0.5)
            outcomes.append("held")
        except RunLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held", "refused"]


def test_a_crashed_runs_lease_lapses_and_is_taken_over(lock: str) -> None:
    stale = {"token": "dead", "holder": "someone@elsewhere pid 1", "started": 0, "expires": time.time() - 1}
    storage.write_bytes_atomic(lock, json.dumps(stale).encode())
    taken = lease.acquire(lock, settle=0.2)
    assert storage.read_json(lock)["token"] == taken.record["token"]


def test_a_lease_whose_process_ended_on_this_machine_is_taken_over_at_once(lock: str) -> None:
    import socket
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"token": "gone", "holder": "a killed trial", "host": socket.gethostname(), "pid": int(ended.stdout),
              "started": time.time(), "expires": time.time() + 100}  # fmt: skip
    storage.write_bytes_atomic(lock, json.dumps(record).encode())
    assert lease.acquire(lock, settle=0.2).record["token"] != "gone"
    alive = record | {"pid": os.getppid()}  # a live process on this machine still holds it
    storage.write_bytes_atomic(lock, json.dumps(alive).encode())
    with pytest.raises(RunLockedError):
        lease.acquire(lock, settle=0.2)


def test_a_damaged_lock_file_is_never_overwritten_unseen(lock: str) -> None:
    storage.write_bytes_atomic(lock, b"\x00garbage")
    with pytest.raises(RunLockedError, match="not a lease record"):
        lease.acquire(lock, settle=0.2)


def test_a_held_lease_is_renewed_while_the_run_lasts_and_released_when_it_fails(tmp_path: Path) -> None:
    lock = str(tmp_path / lease.LOCK_FILE)
    with pytest.raises(RuntimeError), lease.held(lock, ttl=0.4, settle=0.05) as held:
        first_expiry = held.record["expires"]
        assert until(lambda: storage.read_json(lock)["expires"] > first_expiry), "never renewed"
        with pytest.raises(RunLockedError):
            lease.acquire(lock, ttl=0.4)
        raise RuntimeError("the job failed")
    assert not storage.exists(lock)


def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll ``condition`` (every 20 ms) until it holds or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


SLOW_RIVAL = """
import sys, time
from pathlib import Path
from geomoe.core import lease

lock, read_done, gap = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
checked = lease._refuse_if_held

def slow_between_read_and_write(location, current, lost_race=False):
    checked(location, current, lost_race)
    if not lost_race and not read_done.exists():  # its first read found the folder free: now a long pause
        read_done.write_text("read")
        time.sleep(gap)

lease._refuse_if_held = slow_between_read_and_write
try:
    held = lease.acquire(lock, ttl=30, settle=0.3)
except lease.RunLockedError:
    print("refused", flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(float(sys.argv[4]))
held.release()
"""


def test_a_rival_whose_write_lands_after_settle_ends_with_one_holder_and_stops_the_other(
    lock: str, tmp_path: Path
) -> None:
    """Another process reads the lock (nothing), then pauses longer than ``settle`` before it writes: meanwhile
    this run takes the lease. On S3 the rival's late write replaces this run's record and its check passes: this
    run sees that at its next check and stops (RunLockedError in the main thread); the rival is the one holder.
    On a file system the rival's second read, just before it would create the file, finds this run's lease and it
    is refused."""
    import subprocess
    import sys

    read_done = tmp_path / "rival-read"
    rival = subprocess.Popen(
        # it writes 3 s after its read: between this run's checks at about 2 and 4 s (settle 0.5, doubling)
        [sys.executable, "-c", SLOW_RIVAL, lock, str(read_done), "3", "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert until(read_done.exists), "the rival never read the lock"
        if lock.startswith("s3://"):
            lost = rf"this run lost its lease \(taken by .* pid {rival.pid}"
            with pytest.raises(RunLockedError, match=lost), lease.held(lock, ttl=30, settle=0.5):
                until(lambda: False, seconds=15)  # working, until the renewer stops it
                pytest.fail("the run went on after losing its lease")
            assert rival.stdout is not None and rival.stdout.readline().strip() == "held"
            assert storage.read_json(lock)["pid"] == rival.pid  # the one holder, untouched by the loser's release
        else:
            with lease.held(lock, ttl=30, settle=0.5) as mine:
                assert rival.stdout is not None and rival.stdout.readline().strip() == "refused"
                assert storage.read_json(lock)["token"] == mine.record["token"] and not mine.lost.is_set()
    finally:
        rival.wait(timeout=30)


def test_a_run_that_cannot_renew_before_its_lease_lapses_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = str(tmp_path / lease.LOCK_FILE)

    import signal

    def unreachable(*_: object) -> None:
        raise OSError("the store does not answer")

    # what Ray Tune's Tuner.fit() leaves installed in the main thread: a SIGINT handler that raises nothing
    swallowed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _: swallowed.append(signum))
    try:
        with pytest.raises(RunLockedError, match="lapsed: renewing failed"), lease.held(lock, ttl=0.4, settle=0.05):
            monkeypatch.setattr(lease.storage, "write_bytes_atomic", unreachable)
            until(lambda: False, seconds=10)
            pytest.fail("the run went on after its lease lapsed")
        assert not swallowed and signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_cli_refuses_a_second_run_before_writing_anything(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    output_root = str(tmp_path / "runs") if where == "local" else request.getfixturevalue("s3_bucket") + "/runs"
    run_dir = storage.join(output_root, "quickstart")
    ownership.claim_dir(run_dir, ownership.Claim("output_root", "quickstart", "run"))  # as the holder's run did
    held = lease.acquire(storage.join(run_dir, lease.LOCK_FILE), settle=0.2)
    before = storage.list_files(run_dir)
    try:
        assert main(["run", str(REPO / "jobs" / "quickstart.yaml"), "--set", f"output_root={output_root}"]) == 2
        assert storage.list_files(run_dir) == before  # nothing else written
    finally:
        held.release()
    message = capsys.readouterr().err
    assert "another run of this job is using its output folder" in message and f"pid {os.getpid()}" in message
    assert "Traceback" not in message
