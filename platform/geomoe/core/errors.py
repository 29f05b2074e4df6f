"""Errors a user can act on: each names the file, the record and the field at fault."""

from __future__ import annotations


class GeomoeError(Exception):
    """Base class for every error geomoe raises on purpose."""


class SpecError(GeomoeError):
    """A job or sweep spec is invalid. The message names the file and the dotted key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key or '<root>'}: {reason}")


class BadRecordError(GeomoeError):
    """One input record is unusable. The message names the file, the record and why."""

    def __init__(self, source: str, record: str | int, reason: str) -> None:
        self.source, self.record, self.reason = str(source), str(record), reason
        super().__init__(f"{source}: record {record}: {reason}")


class DatasetError(GeomoeError):
    """A dataset as a whole is unusable (missing layout file, unparsable JSON, ...)."""


class ModelError(GeomoeError):
    """A model source or checkpoint does not fit what the spec asks for (architecture, depth, saved state)."""


class ExperimentError(GeomoeError):
    """An experiment folder cannot be used as asked (it holds another run, or no sweep)."""


class RunLockedError(GeomoeError):
    """Another run holds the run folder's lease (the same job name and output root)."""


class ImageError(GeomoeError):
    """An image file cannot be used (missing, truncated, not an image, a decompression bomb). Names the file."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: unreadable image: {reason}")
