"""Image checks shared by every reader: a file must exist, decode completely, and not be empty.

Images are read as bytes through ``geomoe.core.storage`` (a local path or a URI) and decoded in the process that
needs the pixels; nothing assumes the image lies on this machine's disk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from geomoe.core import storage
from geomoe.core.errors import ImageError

# A truncated JPEG must be an error, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False
HEADER_BYTES = 64 << 10  # enough for the size in a JPEG/PNG header, EXIF included
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # EVA-CLIP / OpenAI CLIP normalisation
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# Everything Pillow raises for a file that is not a usable image, a decompression bomb included (a header claiming
# more than twice Image.MAX_IMAGE_PIXELS: Pillow refuses it before allocating anything).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# Where a reader gets encoded images: keys (paths, or the keys of a prepared image table) -> bytes, in order.
# None means each key is a path or URI read through the storage layer (``read_paths``).
Fetch = Callable[[Sequence[str]], list[bytes]]


def read_paths(paths: Sequence[str]) -> list[bytes]:
    return [storage.read_bytes(str(p)) for p in paths]


def image_problem(path: str | os.PathLike[str], decode: bool = True) -> str | None:
    """Return why ``path`` is not a usable image (a short reason), or None when it is fine.

    With ``decode`` the whole image is decoded, which is what catches truncated files.
    """
    shown = storage.redact(path)
    try:
        data = storage.read_bytes(path)
    except storage.StorageError:
        return f"missing image: {shown}"
    return bytes_problem(data, shown, decode)


def bytes_problem(data: bytes, shown: str, decode: bool = True) -> str | None:
    """``image_problem`` for bytes already read (``shown``: how to name them)."""
    try:
        width, height = decoded(data).size if decode else header_size(data)
    except DECODE_ERRORS as err:
        return f"unreadable image: {shown}: {_why(err)}"
    if width == 0 or height == 0:
        return f"unreadable image: {shown}: zero size"
    return None


def decoded(data: bytes) -> Image.Image:
    """The image in ``data`` as it is meant to be seen: loaded, turned by its EXIF orientation, and 16-bit
    greyscale scaled to 8 bits (Pillow's own conversion to RGB clips it to white)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    if upright.mode.startswith("I"):  # 16-bit PNG/TIFF greyscale: "I;16*" or "I" holding 0..65535
        wide = np.asarray(upright, np.float32)
        upright = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return upright


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """The decoded image at a path or URI (loaded: no file handle stays open); ImageError naming the file if it
    is not a usable image."""
    return decoded_or_error(storage.read_bytes(path), path)


def decoded_or_error(data: bytes, name: str | os.PathLike[str]) -> Image.Image:
    """``decoded``, with ImageError naming the image (``name``) when it is not usable."""
    try:
        return decoded(data)
    except DECODE_ERRORS as err:
        raise ImageError(storage.redact(name), _why(err)) from None


def image_arrays(keys: Sequence[str], size: int, fetch: Fetch | None) -> np.ndarray:
    """``image_array`` of each key, stacked: (B, 3, size, size)."""
    blobs = (fetch or read_paths)([str(k) for k in keys])
    return np.stack([image_array(str(k), size, data) for k, data in zip(keys, blobs, strict=True)])


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only (a ranged read of the first
    bytes on an object store); ImageError naming the file if it is not a usable image."""
    try:
        try:
            return header_size(storage.read_head(path, HEADER_BYTES))
        except (UnidentifiedImageError, OSError):  # a header longer than the first bytes: read it all
            return header_size(storage.read_bytes(path))
    except DECODE_ERRORS as err:
        raise ImageError(storage.redact(path), _why(err)) from None


def _why(err: BaseException) -> str:
    """A decoding error in words (Pillow names a BytesIO object's address when it knows no format)."""
    return (
        "not an image file, or a format Pillow does not read" if isinstance(err, UnidentifiedImageError) else str(err)
    )


def header_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        turned = image.getexif().get(0x0112) in ROTATED
    return (height, width) if turned else (width, height)


def image_array(path: str | os.PathLike[str], size: int, data: bytes | None = None) -> np.ndarray:
    """Decode, resize (bicubic) and normalise an image for EVA-CLIP: float32 (3, size, size); ``data``: its bytes
    when the caller has them (``path`` then only names it in errors).

    Here, not beside the models, so that a Ray Data decoding task imports PIL and numpy only (importing torch,
    open_clip and transformers costs a fresh worker process seconds)."""
    image = open_image(path) if data is None else decoded_or_error(data, path)
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
    mean, std = np.asarray(IMAGE_MEAN, np.float32), np.asarray(IMAGE_STD, np.float32)
    normalised: np.ndarray = (rgb / np.float32(255.0) - mean) / std
    return normalised.transpose(2, 0, 1).copy()


class DecodeImages:
    """Ray Data map: image paths -> normalised pixel arrays ``image`` (and ``negatives`` from the mined
    ``negative_paths`` of PE-MoE's stage 2), their bytes from ``fetch`` (a prepared image table) or each path.
    A module without torch: the tasks that run it start light."""

    def __init__(self, size: int, negatives: bool, fetch: Fetch | None = None) -> None:
        self.size, self.negatives, self.fetch = size, negatives, fetch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["image"] = image_arrays(list(batch["image_path"]), self.size, self.fetch)
        if self.negatives:
            rows = [list(row) for row in batch["negative_paths"]]
            flat = image_arrays([p for row in rows for p in row], self.size, self.fetch)
            batch["negatives"] = flat.reshape(len(rows), -1, *flat.shape[1:])
        return batch
