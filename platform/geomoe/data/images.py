"""Image checks shared by every reader: a file must exist, decode completely, and not be empty.

Images are read as bytes through ``geomoe.storage`` (a local path or a URI) and decoded in the process that
needs the pixels; nothing assumes the image lies on this machine's disk.
"""

from __future__ import annotations

import io
import os

from PIL import Image, ImageFile, UnidentifiedImageError

from geomoe import storage

# A truncated JPEG must be an error, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False
HEADER_BYTES = 64 << 10  # enough for the size in a JPEG/PNG header, EXIF included


def image_problem(path: str | os.PathLike[str], decode: bool = True) -> str | None:
    """Return why ``path`` is not a usable image (a short reason), or None when it is fine.

    With ``decode`` the whole image is decoded, which is what catches truncated files.
    """
    shown = storage.redact(path)
    try:
        data = storage.read_bytes(path)
    except storage.StorageError:
        return f"missing image: {shown}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if decode:
                image.load()
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"unreadable image: {shown}: {err}"
    if width == 0 or height == 0:
        return f"unreadable image: {shown}: zero size"
    return None


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """The decoded image at a path or URI (loaded: no file handle stays open)."""
    with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
        image.load()
        return image


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only (a ranged read of the first bytes on an object store)."""
    head = storage.read_head(path, HEADER_BYTES)
    try:
        with Image.open(io.BytesIO(head)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):  # a header longer than the first bytes: read it all
        with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
            return image.size
