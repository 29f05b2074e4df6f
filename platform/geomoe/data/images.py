"""Image checks shared by every reader: a file must exist, decode completely, and not be empty."""

from __future__ import annotations

import os

from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated JPEG must be an error, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def image_problem(path: str | os.PathLike[str], decode: bool = True) -> str | None:
    """Return why ``path`` is not a usable image (a short reason), or None when it is fine.

    With ``decode`` the whole image is decoded, which is what catches truncated files.
    """
    if not os.path.isfile(path):
        return f"missing image: {path}"
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"unreadable image: {path}: {err}"
    if width == 0 or height == 0:
        return f"unreadable image: {path}: zero size"
    return None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only."""
    with Image.open(path) as image:
        return image.size
