"""Two copies of the suite on one machine do not interfere: each starts its own S3 server, Ray cluster and Serve
proxy, on ports the OS gave out and checked to be its own (tests/ports.py), and finds only its own there. Before,
both Serve proxies took port 8000 and one copy's requests reached the other's app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_copies_of_the_suite_at_once_each_use_only_their_own_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}  # as a fresh shell has

    def copy(n: int) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging"]
        command += ["--basetemp", str(tmp_path / f"copy{n}"), "tests/ray/probe_isolation.py"]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    copies = [copy(1), copy(2)]
    outputs = [c.communicate(timeout=600)[0] for c in copies]
    for done, output in zip(copies, outputs, strict=True):
        assert done.returncode == 0 and "1 passed" in output, output[-3000:]
