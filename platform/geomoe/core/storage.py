"""Where every byte lives (core, no Ray): a location is a local path or a URI, resolved once into a
``pyarrow.fs`` filesystem and a path inside it: the abstraction Ray Data, Train and Tune use themselves.

Locations travel through the platform as plain strings: an absolute local path (the local disk, or a shared
mount such as NFS/EFS) or a URI (``s3://bucket/key``, ``gs://``, ``abfs://``, ``hdfs://``). Every read and write
of the platform goes through this module, so a stage never assumes that the machine running it wrote the files
it reads.

Atomicity. A local file is written to a temporary name and renamed. Object stores have no rename, but one PUT
is atomic (the object appears whole or not at all), so a file is uploaded from a finished local temporary file
in one request. A folder is finished when its manifest exists: it is written last (``ownership.atomic_dir``,
``MANIFEST``), and readers treat a folder without it as unfinished.

Ownership. geomoe never deletes what it did not write: folders are published (``ownership.atomic_dir``) only
over a folder that is absent, empty or geomoe's own output (``geomoe.core.ownership``).

Credentials come from the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; ``GOOGLE_APPLICATION_CREDENTIALS``), never from specs. ``redact``
removes any that a user put into a URI before it is logged or recorded.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs

from geomoe.core.errors import GeomoeError

MANIFEST = "manifest.json"
OWNER_FILE = ".geomoe-output.json"  # a folder's owner record (geomoe.core.ownership): this folder is geomoe's output
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")
_BUCKET_SCHEMES = ("s3", "gs", "gcs")
_FILESYSTEMS: dict[tuple[str, str, str], pafs.FileSystem] = {}
_LOCK = threading.Lock()


class StorageError(GeomoeError):
    """A location cannot be read or written. The message names the URI and what to check."""


def is_uri(location: str | os.PathLike[str]) -> bool:
    return bool(_URI.match(str(location)))


def is_local(location: str | os.PathLike[str]) -> bool:
    """True for a plain path or file:// URI: a disk of this machine (which may be a shared mount)."""
    match = _URI.match(str(location))
    return match is None or match.group(1).lower() == "file"


def redact(location: str | os.PathLike[str]) -> str:
    """The location with any user:secret@ part removed: safe to log, record and show."""
    return _USERINFO.sub(r"\1", str(location))


def absolute(location: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """A URI (or a model registry URI, ``models:/...``) as it is; a local path made absolute against ``base``
    (default: the working directory)."""
    text = str(location)
    if is_uri(text) or text.startswith("models:/"):
        return text
    return str((Path(base or Path.cwd()) / text).resolve())


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location`` / parts, for paths and URIs alike (``Path`` would fold ``s3://`` into ``s3:/``)."""
    text = str(location)
    if not is_uri(text):
        return str(Path(text).joinpath(*parts))
    return posixpath.join(text.rstrip("/"), *parts)


def parent(location: str | os.PathLike[str]) -> str:
    text = str(location).rstrip("/")
    return posixpath.dirname(text) if is_uri(text) else str(Path(text).parent)


def is_inside(location: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``location`` lies strictly inside ``folder`` (local paths made absolute; URIs compared as text)."""
    inner, outer = absolute(location).rstrip("/"), absolute(folder).rstrip("/")
    if is_uri(inner) or is_uri(outer):
        return inner.startswith(outer + "/")
    return Path(inner) != Path(outer) and Path(inner).is_relative_to(Path(outer))


def basename(location: str | os.PathLike[str]) -> str:
    return posixpath.basename(str(location).rstrip("/"))


@dataclass(frozen=True)
class Location:
    """A resolved location: the filesystem that holds it and the path inside that filesystem."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return redact(self.uri)


def resolve(location: str | os.PathLike[str] | Location) -> Location:
    """Resolve once: an object store's filesystem per (scheme, bucket, endpoint) is created and then reused (S3
    clients are costly to build, and some resolve the bucket's region with a request)."""
    if isinstance(location, Location):
        return location
    text = str(location)
    if is_local(text):
        path = text[len("file://") :] if text.lower().startswith("file://") else text
        return Location(text, pafs.LocalFileSystem(), str(Path(path).resolve()))
    scheme, rest = text.split("://", 1)
    # Only for bucket stores is the path inside the filesystem "bucket/key" (hdfs and abfs spell it otherwise).
    key = (scheme.lower(), rest.split("/", 1)[0], os.environ.get("AWS_ENDPOINT_URL", ""))
    with _LOCK:
        fs = _FILESYSTEMS.get(key) if key[0] in _BUCKET_SCHEMES else None
    if fs is not None:
        return Location(text, fs, redact(text).split("://", 1)[1].rstrip("/"))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError or ValueError here
        raise storage_error(text, err) from err
    with _LOCK:
        _FILESYSTEMS[key] = fs
    return Location(text, fs, path.rstrip("/"))


def uri_of(base: Location, path: str) -> str:
    """The location (as the user spells it) of ``path``, a path inside ``base``'s filesystem (Ray reports those)."""
    if base.local:
        return path
    inner = path.rstrip("/")
    if not (inner == base.path or inner.startswith(base.path + "/")):
        raise StorageError(f"{path} is not inside {base}")
    return base.uri.rstrip("/") + inner[len(base.path) :]


def filesystem_and_path(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """What Ray Data / Train / Tune take as ``filesystem=`` and the path within it."""
    loc = resolve(location)
    return loc.fs, loc.path


def storage_error(location: str | os.PathLike[str] | Location, err: BaseException) -> StorageError:
    """Turn a filesystem error into one a user can act on, naming the (redacted) location."""
    where = str(location) if isinstance(location, Location) else redact(location)
    text = str(err)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if isinstance(err, FileNotFoundError) or "Path does not exist" in text:
        hint = "the bucket does not exist" if _bucket_missing(location) else "no such file or folder"
    elif "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        hint = "the bucket does not exist"
    elif any(s in text for s in ("NETWORK_CONNECTION", "Couldn't connect", "curlCode", "Connection refused")):
        hint = f"cannot reach the storage endpoint ({'AWS_ENDPOINT_URL=' + endpoint if endpoint else 'default'})"
    elif any(s in text for s in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch")) or re.search(
        r"(HTTP|status)\D{0,12}403\b", text
    ):  # a bare "403" also matched a bucket name that holds those digits (an unreachable endpoint read as denied)
        hint = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the instance profile)"
    else:
        hint = text.splitlines()[0] if text else type(err).__name__
    return StorageError(f"{where}: {hint}")


def _bucket_missing(location: str | os.PathLike[str] | Location) -> bool:
    try:
        loc = resolve(location)
        bucket = loc.path.split("/", 1)[0]
        return not loc.local and loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (OSError, ValueError, StorageError):
        return False


@contextmanager
def named_errors(location: str | os.PathLike[str] | Location) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except (OSError, ValueError) as err:  # pyarrow's ArrowException subclasses one of these
        raise storage_error(location, err) from err


@contextmanager
def full_disk(location: Location) -> Iterator[None]:
    """A writer that ran out of space (or quota) is a StorageError naming where the output was going."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise storage_error(location, err) from err
        raise


def info(location: str | os.PathLike[str] | Location) -> pafs.FileInfo:
    loc = resolve(location)
    with named_errors(loc):
        return loc.fs.get_file_info(loc.path)


def is_file(location: str | os.PathLike[str] | Location) -> bool:
    return bool(info(location).type == pafs.FileType.File)


def is_dir(location: str | os.PathLike[str] | Location) -> bool:
    return bool(info(location).type == pafs.FileType.Directory)


def exists(location: str | os.PathLike[str] | Location) -> bool:
    return bool(info(location).type != pafs.FileType.NotFound)


def read_bytes(location: str | os.PathLike[str] | Location) -> bytes:
    loc = resolve(location)
    with named_errors(loc), loc.fs.open_input_stream(loc.path) as stream:
        return bytes(stream.read())


def read_head(location: str | os.PathLike[str] | Location, size: int) -> bytes:
    """The first ``size`` bytes (one ranged GET on an object store)."""
    loc = resolve(location)
    with named_errors(loc), loc.fs.open_input_file(loc.path) as handle:
        return bytes(handle.read(size))


def read_text(location: str | os.PathLike[str] | Location) -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped); StorageError naming the line if it is not UTF-8."""
    return _decode_utf8(read_bytes(location), location)


def _decode_utf8(data: bytes, location: str | os.PathLike[str] | Location) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        shown = redact(location.path if isinstance(location, Location) else location)
        raise StorageError(f"{shown}: line {line}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def read_json(location: str | os.PathLike[str] | Location) -> Any:
    return json.loads(read_text(location))


def read_json_if_exists(location: str | os.PathLike[str] | Location) -> Any | None:
    """The parsed JSON file, or None when it does not exist (a finished-marker check): one GET, no HEAD first."""
    loc = resolve(location)
    try:
        with loc.fs.open_input_stream(loc.path) as stream:
            data = bytes(stream.read())
    except (OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError) or "Path does not exist" in str(err):
            return None
        raise storage_error(loc, err) from err
    return json.loads(data)


@contextmanager
def open_input(location: str | os.PathLike[str] | Location) -> Iterator[IO[bytes]]:
    """A seekable binary file object (PIL, torch.load, pyarrow readers take it)."""
    loc = resolve(location)
    if loc.local:
        with named_errors(loc), open(loc.path, "rb") as handle:
            yield handle
        return
    yield io.BytesIO(read_bytes(loc))


def upload_file(local: Path, loc: Location) -> None:
    """One object from a finished local file (a single PUT, or a multipart upload completed only at the end)."""
    with named_errors(loc):
        parent_dir = posixpath.dirname(loc.path)
        if parent_dir:
            loc.fs.create_dir(parent_dir, recursive=True)
        with open(local, "rb") as source, loc.fs.open_output_stream(loc.path) as sink:
            shutil.copyfileobj(source, sink, length=8 << 20)


@contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a local temporary file path; publish it at ``final`` (a path or URI) only if the block succeeds."""
    loc = resolve(final)
    if loc.local:
        target = Path(loc.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        directory: str | None = str(target.parent)
        prefix = f".{target.name}."
    else:
        directory, prefix = None, f"geomoe-{basename(loc.path)}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix + ".tmp", dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with full_disk(loc):
            yield tmp_path
        with named_errors(loc):  # a full disk or a failed upload: a StorageError naming the location, nothing published
            if loc.local:
                os.replace(tmp_path, loc.path)
            else:
                upload_file(tmp_path, loc)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(location: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(location) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(location: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(location, text.encode("utf-8"))


def write_json_atomic(location: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(location, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def delete(location: str | os.PathLike[str] | Location) -> None:
    """Remove a file or a folder (recursively); nothing to remove is fine. Only for geomoe's own files and for
    folders inside a folder it claimed (``claim_dir``); never a root."""
    loc = resolve(location)
    if is_root(loc):
        raise StorageError(f"{loc}: a root is never deleted")
    kind = info(loc).type
    if kind == pafs.FileType.Directory and not loc.local:
        delete_listed(loc, list_files(loc))
        return
    with named_errors(loc):
        if kind == pafs.FileType.Directory:
            loc.fs.delete_dir(loc.path)
        elif kind == pafs.FileType.File:
            loc.fs.delete_file(loc.path)


def delete_listed(loc: Location, listing: list[tuple[str, int]]) -> None:
    """Delete exactly the files a listing of ``loc`` found, in its order (a prefix is never deleted wholesale: a
    file written since the listing survives)."""
    with named_errors(loc):
        for rel, _ in listing:
            loc.fs.delete_file(f"{loc.path}/{rel}")


def is_root(loc: Location) -> bool:
    """A bucket, or a local file system's root or home folder: never an output folder of its own."""
    path = Path(loc.path)
    return "/" not in loc.path.strip("/") if not loc.local else path in (Path(path.anchor), Path.home())


def list_files(location: str | os.PathLike[str] | Location) -> list[tuple[str, int]]:
    """(path relative to ``location``, size) of every file below it, sorted; empty when it does not exist."""
    loc = resolve(location)
    if info(loc).type != pafs.FileType.Directory:
        return []
    with named_errors(loc):
        found = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    base = loc.path.rstrip("/") + "/"
    return sorted((f.path[len(base) :], int(f.size or 0)) for f in found if f.type == pafs.FileType.File)


def files_sha256(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file below a local folder (what ``cached_copy`` verifies)."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def file_sha256(location: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    loc = resolve(location)
    digest = hashlib.sha256()
    with named_errors(loc), loc.fs.open_input_stream(loc.path) as stream:
        for block in iter(lambda: stream.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(
    location: str | os.PathLike[str],
    keep: Callable[[str], bool] = lambda p: True,
    listing: list[tuple[str, int]] | None = None,
) -> str:
    """Hash of the relative paths and sizes of every file below ``location`` but owner records (cheap; contents
    not read);
    ``listing``: that folder's ``list_files``, when the caller has it already."""
    digest = hashlib.sha256()
    for rel, size in list_files(location) if listing is None else listing:
        if keep(rel) and posixpath.basename(rel) != OWNER_FILE:  # who wrote a folder is not what it holds
            digest.update(f"{rel}\0{size}\n".encode())
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
