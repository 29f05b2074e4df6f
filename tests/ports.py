"""Ports and processes of the tests' own servers (imported by module name, like tiny_jobs).

A port found free by binding and closing a socket can be taken by another process before our server binds it
(another copy of the suite, say), and a server that then fails to bind may leave a stranger answering on that
port. So a server started on such a port counts as up only once a listening socket on it belongs to the server's
own process tree; otherwise it is stopped and started again on a new port.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


def unused_port() -> int:
    """A port the OS reports unused now; see ``start_on_a_free_port`` for what makes using it safe."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants, those still running (not exited, not zombies)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            continue
    return running


def stop_tree(pid: int, seconds: float = 20) -> None:
    """SIGTERM ``pid`` and give it ``seconds`` to stop its own children (``ray start --block`` does), then SIGTERM
    what is left of its tree, and SIGKILL whatever still runs a few seconds later."""
    processes = tree(pid)
    if not processes:
        return
    root, descendants = processes[0], processes[1:]
    _signal([root], "terminate")
    psutil.wait_procs([root], timeout=seconds)
    left = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    _signal(left, "terminate")
    _, alive = psutil.wait_procs(left, timeout=5)
    _signal([root, *alive], "kill")


def _signal(processes: list[psutil.Process], how: str) -> None:
    for process in processes:
        try:
            getattr(process, how)()
        except psutil.NoSuchProcess:
            continue


def listens_in_tree(pid: int, port: int) -> bool:
    """Whether a process of ``pid``'s tree listens on TCP ``port``."""
    for process in tree(pid):
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return True
    return False


def start_on_a_free_port(
    start: Callable[[int], T], owner: Callable[[T], int], stop: Callable[[T], None], seconds: float = 90
) -> tuple[T, int]:
    """``start(port)`` on an unused port until the server (``owner(server)``: the pid whose tree serves it) listens
    there within ``seconds``; a try that loses the port to another process is stopped and retried, three times."""
    for _ in range(3):
        port = unused_port()
        server = start(port)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and tree(owner(server)):
                if listens_in_tree(owner(server), port):
                    return server, port
                time.sleep(0.2)
        except BaseException:  # never leave a started server behind (an interrupted or failed check)
            stop(server)
            raise
        stop(server)
    raise RuntimeError("no server of ours came up on three free ports in a row")


def own_descendants(matching: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Processes descended from this one (a Ray cluster this process started) that ``matching`` accepts: the only
    processes a test may signal."""
    found = []
    for process in tree(os.getpid())[1:]:
        try:
            if matching(process):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def start_serve() -> str:
    """Ray Serve in this process's Ray cluster, its proxy on 127.0.0.1 at a port of its own (Serve's default 8000
    may be another suite's on this machine); the base URL. ``serve.shutdown()`` ends it."""
    from ray import serve

    def start(port: int) -> int:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        return os.getpid()  # the proxy is a Ray worker: a descendant of the cluster this process started

    _, port = start_on_a_free_port(start, owner=lambda pid: pid, stop=lambda _: serve.shutdown(), seconds=60)
    return f"http://127.0.0.1:{port}"
