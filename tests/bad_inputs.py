"""The bad-input corpus: every kind of broken, hostile or unusual input the readers meet, generated here (no
hand-made binary files), each with the behaviour it must get written down beside it.

    python tests/bad_inputs.py OUT     # writes the corpus under OUT and prints the table of cases

Outcomes:
- ``handled``: a decodable variant (CMYK, greyscale, EXIF-rotated, a PNG named .jpeg, CRLF, a BOM ...) is read
  correctly, not rejected;
- ``rejected``: one record is unusable: with ``on_bad_record: skip`` it is counted with its reason, with ``fail``
  (the default) the run stops with a BadRecordError naming the file, the record and the reason;
- ``error``: the file as a whole is unusable: a GeomoeError naming the file and the reason, before any work.

tests/unit/test_bad_inputs.py runs every case through its reader; tests/ray/test_prepare.py runs the image and
annotation cases through the prepare stage. docs/reliability.md's table is ``markdown_table()``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


@dataclass(frozen=True)
class Case:
    name: str
    reader: str  # image, geotext, cvogl, track4, yaml, checkpoint
    outcome: str  # handled, rejected, error
    expect: str  # a regex the reason or message matches (the file is named in it for rejected and error)
    behaviour: str  # what happens, in words (docs/reliability.md's table)
    write: Callable[[Path], Path]  # writes the input under a folder; returns the file or folder to read


class Canary:
    """Unpickling this creates the file ``marker``: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def marker_of(folder: Path) -> Path:
    return folder / "CODE-RAN"


# -- images --------------------------------------------------------------------------------------------------------


def halves(size: tuple[int, int] = (40, 30)) -> Image.Image:
    """Left half red, right half blue: orientation shows."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def _image(name: str, save: Callable[[Path], None]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path)
        return path

    return write


def _jpeg_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming ``width`` x ``height`` px, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path.write_bytes(_jpeg_bytes(halves(), exif=exif.tobytes()))


IMAGES = [
    Case("truncated JPEG", "image", "rejected", r"unreadable image: .*truncated\.jpg: .*[Tt]runcated",
         "rejected: unreadable image (truncated), named", _image("truncated.jpg", lambda p: p.write_bytes(
             _jpeg_bytes(halves((64, 64)))[:400]))),
    Case("zero-byte file", "image", "rejected", r"unreadable image: .*empty\.jpg: not an image file",
         "rejected: unreadable image (not an image file)", _image("empty.jpg", lambda p: p.write_bytes(b""))),
    Case("PNG named .jpeg", "image", "handled", "", "decoded by its content",
         _image("really-png.jpeg", lambda p: halves().save(p, "PNG"))),
    Case("header claims 20,000 x 20,000 px", "image", "rejected",
         r"unreadable image: .*bomb\.png: Image size \(400000000 pixels\) exceeds limit",
         "rejected before decoding (decompression bomb); 413 from the Serve app",
         _image("bomb.png", lambda p: p.write_bytes(png_header_only(20_000, 20_000)))),
    Case("CMYK JPEG", "image", "handled", "", "converted to RGB",
         _image("cmyk.jpg", lambda p: halves().convert("CMYK").save(p, "JPEG", quality=95))),
    Case("greyscale JPEG", "image", "handled", "", "replicated to three channels",
         _image("grey.jpg", lambda p: halves().convert("L").save(p, "JPEG", quality=95))),
    Case("16-bit greyscale PNG", "image", "handled", "", "scaled to 8 bits (not clipped to white)",
         _image("sixteen.png", lambda p: Image.fromarray(np.full((30, 40), 40_000, np.uint16)).save(p))),
    Case("EXIF orientation 6", "image", "handled", "", "turned upright; sizes reported as displayed",
         _image("rotated.jpg", _exif_rotated)),
]  # fmt: skip


# -- GeoText-1652 annotations --------------------------------------------------------------------------------------

GOOD_IMAGE = "train/0839/image-01.jpeg"


def _geotext(file: str, content: bytes | list[dict[str, Any]]) -> Callable[[Path], Path]:
    """A GeoText-1652 root with one good image and ``file`` (train.json or the test file) holding ``content``."""

    def write(folder: Path) -> Path:
        image = folder / "images" / GOOD_IMAGE
        image.parent.mkdir(parents=True, exist_ok=True)
        halves().save(image, "JPEG")
        (folder / file).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return folder / file

    return write


def _entry(caption: Any, **changes: Any) -> dict[str, Any]:
    return {"image_id": "0839/image-01.jpeg", "image": GOOD_IMAGE, "caption": caption} | changes


GOOD = _entry("A red roof beside a road.")
GEOTEXT = [
    Case("malformed JSON", "geotext", "error", r"train\.json: malformed JSON at line 1 column \d+",
         "error naming the file, line and column", _geotext("train.json", b'[{"image_id": "0839/image-01.jpeg", ')),
    Case("wrong field type", "geotext", "rejected", r"wrong type: field 'image_id' must be a non-empty string",
         "rejected: wrong type, naming the field", _geotext("train.json", [GOOD, _entry("x", image_id=42)])),
    Case("non-UTF-8 text", "geotext", "error", r"train\.json: line 2: not UTF-8 text",
         "error naming the file and line", _geotext(
             "train.json", b'[{"image_id": "0839/image-01.jpeg", "image": "train/0839/image-01.jpeg",\n'
             b'"caption": "a \xff roof"}]')),
    Case("empty caption", "geotext", "rejected", r"empty caption", "rejected: empty caption",
         _geotext("train.json", [GOOD, _entry("")])),
    Case("whitespace caption", "geotext", "rejected", r"empty caption", "rejected: empty caption",
         _geotext("train.json", [GOOD, _entry(" \t\n ")])),
    Case("10,000-word caption", "geotext", "handled", "", "kept, cut to the word limit when prepared (30 train)",
         _geotext("train.json", [_entry(" ".join(["roof"] * 10_000))])),
    Case("duplicate image ids", "geotext", "rejected", r"duplicate image: 'train/0839/image-01\.jpeg' as in entry 0",
         "rejected: the second entry, naming the first", _geotext(
             "test_951_version.json", [_entry(["a roof"]), _entry(["a road"])])),
]  # fmt: skip


# -- CVOGL ---------------------------------------------------------------------------------------------------------


def _cvogl(box: list[float], click: tuple[float, float] = (10.0, 10.0)) -> Callable[[Path], Path]:
    """A CVOGL DroneAerial test split: one good tuple, then one with ``box`` and ``click`` (64 px images)."""

    def write(folder: Path) -> Path:
        import torch

        base = folder / "CVOGL_DroneAerial"
        for sub in ("query", "satellite"):
            (base / sub).mkdir(parents=True, exist_ok=True)
            halves((64, 64)).save(base / sub / "0001.png")
        good = (0, "0001.png", "0001.png", [10, 10], [10.0, 10.0], [5.0, 5.0, 30.0, 30.0], None, "building")
        bad = (1, "0001.png", "0001.png", [10, 10], list(click), box, None, "building")
        torch.save([good, bad], base / "CVOGL_DroneAerial_test.pth")
        return folder

    return write


def _pickled_split(folder: Path) -> Path:
    base = folder / "CVOGL_DroneAerial"
    base.mkdir(parents=True, exist_ok=True)
    (base / "CVOGL_DroneAerial_test.pth").write_bytes(pickle.dumps([Canary(marker_of(folder))]))
    return folder


CVOGL = [
    Case("box outside the tile", "cvogl", "rejected", r"box outside tile", "rejected: box outside tile",
         _cvogl([500.0, 500.0, 600.0, 600.0])),
    Case("inverted box", "cvogl", "rejected", r"degenerate box", "rejected: degenerate box",
         _cvogl([40.0, 40.0, 10.0, 10.0])),
    Case("NaN in a box", "cvogl", "rejected", r"box must be finite", "rejected: not finite",
         _cvogl([float("nan"), 1.0, 5.0, 5.0])),
    Case("click outside the query image", "cvogl", "rejected", r"click outside query: \(1000\.0, 5\.0\) not in 64x64",
         "rejected: click outside query", _cvogl([5.0, 5.0, 30.0, 30.0], (1000.0, 5.0))),
    Case(".pth carrying pickled code", "cvogl", "error", r"DroneAerial_test\.pth: not a readable torch-saved list",
         "error; the code never runs (weights-only loader)", _pickled_split),
]  # fmt: skip


# -- Track 4 queries, job specs, checkpoints ------------------------------------------------------------------------


def _text(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return folder / name

    return write


def _job(section: str, key: str, value: Any, append: str = "") -> Callable[[Path], Path]:
    """The quickstart job with ``section.key`` set to ``value``, and ``append`` (YAML text) added at the end."""

    def write(folder: Path) -> Path:
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml").read_text())
        raw[section][key] = value
        (folder / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False) + append)
        return folder / "job.yaml"

    return write


def _alias_bomb(folder: Path) -> Path:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return _text("job.yaml", ("\n".join(lines) + "\nname: *a9\n").encode())(folder)


def _pickled_checkpoint(folder: Path) -> Path:
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    payload = {"model": {}, "spec": {}, "stage": 1, "epoch": 0, "extra": Canary(marker_of(folder))}
    (folder / "ckpt" / "state.pt").write_bytes(pickle.dumps(payload))
    return folder / "ckpt"


OTHERS = [
    Case("Track 4 queries with CRLF", "track4", "handled", "", "read; line ends stripped",
         _text("queries.txt", b"q_00001\ta red roof\r\nq_00002\ta road\r\n")),
    Case("Track 4 queries with a BOM", "track4", "handled", "", "read; the BOM dropped",
         _text("queries.txt", "\ufeffq_00001\ta red roof\nq_00002\ta road\n".encode())),
    Case("Track 4 line without a tab", "track4", "rejected", r"malformed line", "rejected: malformed line",
         _text("queries.txt", b"q_00001\ta red roof\nq_00002 a road\n")),
    Case("Track 4 duplicate query ids", "track4", "rejected", r"duplicate query id q_00001",
         "rejected: duplicate query id", _text("queries.txt", b"q_00001\ta red roof\nq_00001\ta road\n")),
    Case("YAML: unknown key", "yaml", "error", r"job\.yaml: train\.bogus: unknown key",
         "error naming the file and key", _job("train", "bogus", 1)),
    Case("YAML: wrong type", "yaml", "error",
         r"job\.yaml: resources\.num_workers: expected a number, got the string 'many'$",
         "error naming the file and key", _job("resources", "num_workers", "many")),
    Case("YAML: a key given twice", "yaml", "error", r"job\.yaml: train: given twice \(lines \d+ and \d+\)",
         "error naming both lines (YAML keeps the last silently)", _job("train", "lr", 0.001, "train: {lr: 1}\n")),
    Case("YAML: alias bomb", "yaml", "error", r"job\.yaml: <root>: its aliases expand it to [\d.]+e\+\d+ values",
         "error before anything expands it", _alias_bomb),
    Case("checkpoint carrying pickled code", "checkpoint", "error", r"old pickle format \(state\.pt\)",
         "error with the conversion command; the code never runs", _pickled_checkpoint),
]  # fmt: skip

CASES = IMAGES + GEOTEXT + CVOGL + OTHERS


def slug(case: Case) -> str:
    return "".join(c if c.isalnum() else "-" for c in case.name.lower()).strip("-")


def markdown_table() -> str:
    rows = [f"| {c.reader} | {c.name} | {c.behaviour} |" for c in CASES]
    return "\n".join(["| reader | input | what happens |", "|---|---|---|", *rows])


def write_corpus(out: Path) -> dict[str, Path]:
    return {slug(case): case.write(out / case.reader / slug(case)) for case in CASES}


if __name__ == "__main__":
    written = write_corpus(Path(sys.argv[1]))
    print(markdown_table())
    print(f"{len(written)} cases under {sys.argv[1]}")
