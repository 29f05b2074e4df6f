"""Run leases: one run per run folder, locally and on object storage (the S3 server on 127.0.0.1); two runs that
start together end with exactly one holder; a crashed run's lease lapses; the CLI's second run refuses before it
writes anything, naming the run that holds the folder."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from geomoe import lease, ownership, storage
from geomoe.cli import main
from geomoe.errors import RunLockedError

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
    with pytest.raises(RuntimeError), lease.held(lock, ttl=0.4) as held:
        first_expiry = held.record["expires"]
        time.sleep(0.6)  # past the first expiry: renewed at least twice meanwhile
        assert storage.read_json(lock)["expires"] > first_expiry
        with pytest.raises(RunLockedError):
            lease.acquire(lock, ttl=0.4)
        raise RuntimeError("the job failed")
    assert not storage.exists(lock)


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
