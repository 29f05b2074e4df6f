"""Local copies of published folders, verified against their manifests: what replicas serve from (an index in
object storage is copied once per node and memory-mapped) and where registry downloads land."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from geomoe.core.storage import MANIFEST, StorageError, file_sha256, join, read_bytes, redact, resolve


def cache_root() -> Path:
    """Where replicas keep local copies of remote folders: GEOMOE_CACHE, else ~/.cache/geomoe."""
    return Path(os.environ.get("GEOMOE_CACHE") or Path.home() / ".cache" / "geomoe")


def cached_copy(location: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None) -> Path:
    """A local, verified copy of a published folder (one whose manifest lists ``files``: name -> sha256).

    A local folder is used where it is. A remote one is copied once into ``<cache>/<sha256 of its manifest>``:
    every file is downloaded, its content hash checked against the manifest, and the copy is renamed into place
    only when all match, so concurrent replicas on a node share one finished copy and a corrupt or partial
    download is never used. The caller memory-maps from the returned folder."""
    loc = resolve(location)
    if loc.local:
        return Path(loc.path)
    manifest_bytes = read_bytes(join(loc.uri, MANIFEST))
    files = json.loads(manifest_bytes).get("files")
    if not isinstance(files, dict) or not files:
        raise StorageError(f"{loc}: its {MANIFEST} lists no file hashes ('files'): rebuild it with this version")
    target = Path(cache or cache_root()) / hashlib.sha256(manifest_bytes).hexdigest()[:24]
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, digest in sorted(files.items()):
            local = tmp / name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(read_bytes(join(loc.uri, name)))
            if file_sha256(local) != digest:
                raise StorageError(f"{redact(join(loc.uri, name))}: content hash differs from the manifest's")
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        try:
            os.replace(tmp, target)
        except OSError:  # another replica finished first: its copy is as good
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
