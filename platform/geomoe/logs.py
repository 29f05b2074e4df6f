"""A job's logs in its run folder: ``<run>/logs/geomoe.log`` (every library's Python logging in this process, INFO
and up) and, copied at the end, ``<run>/logs/ray/`` (the Ray session's logs: every worker's output, Ray Data's
log). The console keeps geomoe's own warnings and anyone's errors; ``verbose`` shows everything as it comes.

A run folder that is a URI gets its logs when the job ends (or fails); a local one has them live."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from geomoe import storage

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"


@dataclass
class RunLogs:
    location: str  # <run>/logs, a path or a URI
    file: Path  # the log file this process writes (under ``location`` when it is local)
    handler: logging.Handler
    verbose: bool

    def tail(self, lines: int = 20) -> list[str]:
        if not self.file.is_file():
            return []
        return self.file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]

    @property
    def log_file(self) -> str:
        return storage.join(self.location, "geomoe.log")


_RUNNING: list[RunLogs] = []  # the job this process runs: for libraries whose loggers appear later (Ray's)


def quiet() -> bool:
    """A job runs in this process and its console shows only what ``run_logs`` lets through."""
    return bool(_RUNNING) and not _RUNNING[0].verbose


def capture_console(*names: str) -> None:
    """Loggers that print to the console themselves (Ray's and Ray Data's, configured when Ray is imported):
    their records go to the run's log file too, and their consoles show errors only."""
    if not quiet():
        return
    for name in names:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
        if _RUNNING[0].handler not in logger.handlers:
            logger.addHandler(_RUNNING[0].handler)


def _release(handler: logging.Handler) -> None:
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger) and handler in logger.handlers:
            logger.removeHandler(handler)


def _ours_or_error(record: logging.LogRecord) -> bool:
    return record.name.startswith("geomoe") or record.levelno >= logging.ERROR


@contextmanager
def run_logs(
    run_dir: str, verbose: bool = False, session_logs: Callable[[], Path | None] = lambda: None
) -> Iterator[RunLogs]:
    """Route Python logging for one job as the module says; ``session_logs`` names the local Ray session's log
    folder at the end (None: no local session), whose files are then copied under ``<run>/logs/ray``."""
    location = storage.join(run_dir, "logs")
    staging = None if storage.is_local(location) else Path(tempfile.mkdtemp(prefix="geomoe-logs-"))
    folder = Path(location) if staging is None else staging
    folder.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(folder / "geomoe.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    to_file.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG records on
    logs = RunLogs(location, folder / "geomoe.log", to_file, verbose)
    root = logging.getLogger()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        console.addFilter(_ours_or_error)
    saved = (root.level, list(root.handlers))
    root.handlers[:] = [to_file, console]
    root.setLevel(logging.INFO)
    _RUNNING[:] = [logs]
    try:
        yield logs
    finally:
        _RUNNING.clear()
        _release(to_file)
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        to_file.close()
        _collect(folder, session_logs())
        if staging is not None:
            storage.upload_dir(staging, location)
            shutil.rmtree(staging, ignore_errors=True)


def _collect(folder: Path, session: Path | None) -> None:
    """The Ray session's log files next to ours (a local cluster's, or this node's of a joined one)."""
    if session is None or not session.is_dir():
        return
    try:
        shutil.copytree(session, folder / "ray", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    except (OSError, shutil.Error) as err:  # a file rotated away meanwhile: the job's outcome stands
        logging.getLogger(__name__).warning("Ray's logs were not all copied from %s: %s", session, err)
