"""The ownership rule of the storage layer (core, no Ray): geomoe never deletes what it did not write.

A stage creates, replaces or clears a folder only if the folder is absent, empty, or geomoe's own output: it holds
an owner record (``storage.OWNER_FILE``: writer, format, job, stage and the spec key that named it), written when a
stage first claims the folder (``claim_dir``, before any output, so that a run killed midway leaves a folder its
rerun may resume or clear) and published with every ``atomic_dir``. Anything else is refused before any
work starts (``ForeignFilesError``: the spec key, the location and the first foreign file, in one line). A bucket
root (or a local file system's root or home folder) is never an output folder, and a folder on an object store is
deleted only as the files a listing found. A file is replaced only if it is absent or geomoe's (``check_file``).
One stage's output is not another's: a folder whose record names another stage (the run folder, say) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from geomoe.core import storage
from geomoe.core.storage import OWNER_FILE

OWNER_FORMAT = 1


class ForeignFilesError(storage.StorageError):
    """An output location holds files geomoe did not write: it is refused, and nothing is touched."""


@dataclass(frozen=True)
class Claim:
    """Who writes an output folder: the spec key that names it (what a refusal quotes), the job and the stage."""

    key: str
    job: str = ""
    stage: str = ""

    def record(self) -> dict[str, Any]:
        return {"writer": "geomoe", "format": OWNER_FORMAT, "job": self.job, "stage": self.stage, "key": self.key}


def refuse_root(loc: storage.Location, key: str) -> None:
    """A bucket, or a local file system's root or home folder, is never an output folder of its own."""
    if storage.is_root(loc):
        raise ForeignFilesError(f"{key}: {loc} is a {'file system' if loc.local else 'bucket'} root; name a folder")


def _owner(loc: storage.Location) -> dict[str, Any] | None:
    """The folder's owner record when it is geomoe's, else None."""
    try:
        record = storage.read_json_if_exists(storage.join(loc.uri, OWNER_FILE))
    except (storage.StorageError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("writer") == "geomoe" else None


def _inspect(loc: storage.Location, key: str) -> tuple[str | None, dict[str, Any] | None]:
    """(the first file under ``loc`` that geomoe did not write, or None; the owner record when it is geomoe's)."""
    refuse_root(loc, key)
    kind = storage.info(loc).type
    if kind == pafs.FileType.NotFound:
        return None, None
    if kind != pafs.FileType.Directory:
        return ".", None
    owner = _owner(loc)
    if owner is not None:
        return None, owner
    listing = storage.list_files(loc)
    return (listing[0][0] if listing else None), None


def foreign_file(location: str | os.PathLike[str] | storage.Location, key: str = "location") -> str | None:
    """The first file under ``location`` that geomoe did not write (relative; ``.`` for a file where a folder
    should be), or None when the folder is absent, empty or geomoe's own output. Refuses roots outright."""
    return _inspect(storage.resolve(location), key)[0]


def check_dir(location: str | os.PathLike[str] | storage.Location, claim: Claim) -> None:
    """Refuse (ForeignFilesError, one line) unless ``location`` may be created, replaced or cleared by geomoe for
    ``claim``'s stage (another stage's output is not its to replace)."""
    loc = storage.resolve(location)
    first, owner = _inspect(loc, claim.key)
    if owner is not None and claim.stage and owner.get("stage") and owner["stage"] != claim.stage:
        raise ForeignFilesError(
            f"{claim.key}: {loc} is the {owner['stage']} output of job {owner.get('job') or '?'} "
            f"({owner.get('key')}), not a {claim.stage} output; point it at a folder of its own"
        )
    if first is not None:
        what = "is a file" if first == "." else f"holds files geomoe did not write (e.g. {first})"
        raise ForeignFilesError(f"{claim.key}: {loc} {what}; point it at an empty folder or at geomoe's own output")


def claim_dir(location: str | os.PathLike[str], claim: Claim) -> None:
    """Make ``location`` geomoe's output folder (check, then write the owner record first, before any output),
    so that a run killed midway leaves a folder its rerun may clear or resume."""
    check_dir(location, claim)
    marker = storage.join(location, OWNER_FILE)
    if storage.read_json_if_exists(marker) is None:
        storage.write_json_atomic(marker, claim.record())


def check_file(location: str | os.PathLike[str], key: str, ours: Callable[[str], bool]) -> None:
    """Refuse to replace a file that geomoe did not write: ``location`` must be absent or pass ``ours``."""
    loc = storage.resolve(location)
    refuse_root(loc, key)
    kind = storage.info(loc).type
    if kind == pafs.FileType.Directory or (kind == pafs.FileType.File and not ours(loc.uri)):
        what = "is a folder" if kind == pafs.FileType.Directory else "is a file geomoe did not write"
        raise ForeignFilesError(f"{key}: {loc} {what}; point it at a new file or at geomoe's own output")


def _publish_dir(local: Path, loc: storage.Location, manifest: str, claim: Claim) -> None:
    """Replace the folder at ``loc`` (checked again: someone may have filled it meanwhile) with the finished local
    folder; its owner record goes first and its manifest (if any) last."""
    check_dir(loc, claim)
    if loc.local:
        final = Path(loc.path)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "replaced")
            os.replace(local, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(local, final)
        return
    # the old manifest first (from then on the folder reads unfinished), the owner record last (a publish cut off
    # midway leaves a folder that is still ours)
    listing = sorted(storage.list_files(loc), key=lambda f: (f[0] != manifest, f[0] == OWNER_FILE))
    storage.delete_listed(loc, listing)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    order = lambda p: (p.name != OWNER_FILE, p.relative_to(local).as_posix() == manifest)  # noqa: E731
    for path in sorted(files, key=order):
        with storage.named_errors(loc):
            storage.upload_file(path, storage.resolve(storage.join(loc.uri, path.relative_to(local).as_posix())))


@contextmanager
def atomic_dir(final: str | os.PathLike[str], claim: Claim, manifest: str = storage.MANIFEST) -> Iterator[Path]:
    """Yield a local temporary folder; publish it at ``final`` (path or URI) only if the block succeeds.

    ``final`` may be absent, empty or geomoe's own output (``claim`` names the spec key a refusal quotes): that
    is checked before the block runs and again right before publishing, and the published folder carries the
    owner record. On an object store the folder's ``manifest`` file is uploaded last, so a reader that waits for
    it never sees a partial folder.
    """
    loc = storage.resolve(final)
    check_dir(loc, claim)
    if loc.local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        directory: str | None = str(Path(loc.path).parent)
    else:
        directory = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{storage.basename(loc.path)}.", suffix=".tmp", dir=directory))
    try:
        with storage.full_disk(loc):
            yield tmp
            (tmp / OWNER_FILE).write_text(json.dumps(claim.record(), indent=2, sort_keys=True) + "\n")
        _publish_dir(tmp, loc, manifest, claim)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upload_dir(source: str | os.PathLike[str], location: str | os.PathLike[str], claim: Claim) -> None:
    """Copy a local folder's files to ``location`` (path or URI), manifest last."""
    with atomic_dir(location, claim) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
