"""A job's logs in its run folder: ``<run>/logs/geomoe.log`` (every library's Python logging in this process, INFO
and up) and ``<run>/logs/ray/`` (the Ray session's logs: every worker's output, Ray Data's log), written when the
job ends or fails. The console keeps geomoe's own warnings and anyone's errors; ``verbose`` shows everything as
it comes."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from geomoe.core import ownership, storage
from geomoe.core.errors import ExperimentError, RunLockedError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"


@dataclass
class RunLogs:
    location: str  # <run>/logs (a path or a URI) once the job ends; a temporary folder if it never started
    file: Path  # the local file this process writes while the job runs
    handler: logging.Handler
    verbose: bool
    last_lines: list[str] = field(default_factory=list)  # the log's last lines, kept when the job ends
    refused: bool = False  # another run holds the run folder: its logs are not ours to overwrite

    def tail(self, lines: int = 20) -> list[str]:
        if not self.file.is_file():
            return []
        return self.file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


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
    """Route Python logging for one job as the module says, into a local file while the job runs; at the end
    (or on a failure) the file and, from ``session_logs`` (the local Ray session's log folder, or None), Ray's
    logs go to ``<run>/logs`` (uploaded when the run folder is a URI). A job that never created its run folder
    (a spec or storage check stopped it first), or that found it in use by another run, writes nothing there: its
    logs stay in a temporary folder, which ``location`` then names."""
    staging = Path(tempfile.mkdtemp(prefix="geomoe-logs-"))
    to_file = logging.FileHandler(staging / "geomoe.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    to_file.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG records on
    logs = RunLogs(storage.join(run_dir, "logs"), staging / "geomoe.log", to_file, verbose)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        console.addFilter(_ours_or_error)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    root.handlers[:] = [to_file, console]
    root.setLevel(logging.INFO)
    _RUNNING[:] = [logs]
    try:
        yield logs
    except (RunLockedError, ExperimentError):  # the folder holds another run (a job's, or a sweep not resumed)
        logs.refused = True
        raise
    finally:
        _RUNNING.clear()
        _release(to_file)
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        to_file.close()
        _publish(logs, staging, run_dir, session_logs())


def _publish(logs: RunLogs, staging: Path, run_dir: str, session: Path | None) -> None:
    logs.last_lines = logs.tail()
    if logs.refused or not storage.exists(run_dir) or ownership.foreign_file(run_dir) is not None:
        logs.location = str(staging)
        return
    _collect(staging, session)
    try:
        ownership.upload_dir(staging, logs.location, ownership.Claim("output_root", stage="logs"))
    except ownership.ForeignFilesError as err:  # the job's own outcome stands; its logs stay where they are
        logging.getLogger(__name__).warning("%s; the logs stay in %s", err, staging)
        logs.location = str(staging)
        return
    shutil.rmtree(staging, ignore_errors=True)


def _collect(folder: Path, session: Path | None) -> None:
    """The Ray session's log files next to ours (a local cluster's, or this node's of a joined one)."""
    if session is None or not session.is_dir():
        return
    try:
        shutil.copytree(session, folder / "ray", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    except (OSError, shutil.Error) as err:  # a file rotated away meanwhile: the job's outcome stands
        logging.getLogger(__name__).warning("Ray's logs were not all copied from %s: %s", session, err)
