"""Text and image transforms of the preprocessing stage (PE-MoE Sec. 3.1; X-VLM caption normalisation).

Order matters and is fixed by ``prepare_caption``: sentence splitting runs on the raw caption (normalisation
removes the periods it splits on), directional sanitisation runs per sentence, normalisation last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_CLAUSE_BREAK = re.compile(r",\s+(?:and\s+|while\s+|with\s+)?|\s+and\s+(?=(?:a|an|the|there|it|its)\b)")

# Phrases whose meaning flips under rotation or flipping of a top-down image. Matched on whole words,
# case-insensitively; multi-word phrases first so "top left" is caught as one.
DEFAULT_DIRECTIONAL_PHRASES: tuple[str, ...] = (
    "north",
    "south",
    "east",
    "west",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
    "north-east",
    "north-west",
    "south-east",
    "south-west",
    "northern",
    "southern",
    "eastern",
    "western",
    "northward",
    "southward",
    "eastward",
    "westward",
    "northwards",
    "southwards",
    "eastwards",
    "westwards",
    "left",
    "right",
    "leftmost",
    "rightmost",
    "left-hand",
    "right-hand",
    "in front of",
    "front",
    "behind",
    "back of",
    "at the back",
    "rear",
    "above",
    "below",
    "top",
    "bottom",
    "upper",
    "lower",
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "clockwise",
    "counterclockwise",
    "anticlockwise",
    "horizontal",
    "horizontally",
    "vertical",
    "vertically",
)


def normalize_caption(text: str, max_words: int | None = None) -> str:
    """X-VLM ``pre_caption``: lowercase, punctuation to spaces, '-' and '/' to spaces, collapse, truncate."""
    text = _PUNCT.sub(" ", text.lower()).replace("-", " ").replace("/", " ")
    words = _SPACES.sub(" ", text).strip().split(" ")
    if max_words is not None and len(words) > max_words:
        words = words[:max_words]
    return " ".join(w for w in words if w)


def split_sentences(text: str) -> list[str]:
    """Split raw text at sentence ends (. ! ? ;) and newlines; keep non-empty stripped pieces."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip(" .!?;")]


def split_statements(text: str, max_words: int = 12) -> list[str]:
    """Split a caption into short statements: sentences, then long sentences at clause breaks.

    A sentence with more than ``max_words`` words is cut at commas and at ' and ' before a new subject.
    """
    statements: list[str] = []
    for sentence in split_sentences(text):
        if len(sentence.split()) <= max_words:
            statements.append(sentence)
            continue
        statements.extend(p.strip() for p in _CLAUSE_BREAK.split(sentence) if p and p.strip(" ,.;"))
    return statements


def directional_matcher(phrases: Iterable[str] = DEFAULT_DIRECTIONAL_PHRASES) -> re.Pattern[str]:
    ordered = sorted({p.lower() for p in phrases}, key=len, reverse=True)
    body = "|".join(re.escape(p).replace(r"\ ", r"[\s-]+") for p in ordered)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


_DEFAULT_MATCHER = directional_matcher()


def has_directional(text: str, matcher: re.Pattern[str] = _DEFAULT_MATCHER) -> bool:
    return matcher.search(text) is not None


def remove_directional(sentences: Sequence[str], matcher: re.Pattern[str] = _DEFAULT_MATCHER) -> list[str]:
    """Drop every sentence that contains a directional phrase (PE-MoE's keyword sanitisation)."""
    return [s for s in sentences if not has_directional(s, matcher)]


@dataclass(frozen=True)
class PreparedCaption:
    caption: str  # normalised full caption
    statements: list[str]  # normalised short statements
    source: str = ""  # the text before normalisation (sanitised, not rule-refined): what an LLM refines


def prepare_caption(
    raw: str,
    max_words: int,
    statement_words: int = 12,
    sanitize: bool = False,
    matcher: re.Pattern[str] = _DEFAULT_MATCHER,
    refine: Callable[[list[str]], list[str]] | None = None,
) -> PreparedCaption:
    """Raw caption -> normalised caption and statements; with ``sanitize``, directional sentences removed;
    ``refine`` rewrites the (sanitised) sentences before normalisation (textual domain alignment).

    A sanitised caption may come out empty (every sentence was directional); the caller decides.
    """
    sentences = split_sentences(raw)
    if sanitize:
        sentences = remove_directional(sentences, matcher)
    source = " ".join(sentences)
    if refine is not None:
        sentences = refine(sentences)
    caption = normalize_caption(" ".join(sentences), max_words)
    statements = [normalize_caption(s) for s in split_statements(". ".join(sentences), statement_words)]
    return PreparedCaption(caption, [s for s in statements if s], source)


@dataclass(frozen=True)
class SatelliteAugment:
    """One geometric + photometric augmentation of a top-down image, recorded so it can be replayed."""

    rot90: int  # quarter turns counter-clockwise, 0..3
    hflip: bool
    vflip: bool
    brightness: float
    contrast: float

    @classmethod
    def sample(cls, rng: np.random.Generator, jitter: float = 0.2) -> SatelliteAugment:
        return cls(
            rot90=int(rng.integers(0, 4)),
            hflip=bool(rng.integers(0, 2)),
            vflip=bool(rng.integers(0, 2)),
            brightness=float(rng.uniform(1 - jitter, 1 + jitter)),
            contrast=float(rng.uniform(1 - jitter, 1 + jitter)),
        )

    def is_geometric(self) -> bool:
        return self.rot90 % 4 != 0 or self.hflip or self.vflip

    def apply(self, image: Image.Image) -> Image.Image:
        out = image.convert("RGB")
        if self.rot90 % 4:
            out = out.rotate(90 * (self.rot90 % 4), expand=True)
        if self.hflip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.vflip:
            out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        out = ImageEnhance.Brightness(out).enhance(self.brightness)
        return ImageEnhance.Contrast(out).enhance(self.contrast)

    def tag(self) -> str:
        flips = ("h" if self.hflip else "") + ("v" if self.vflip else "")
        return f"r{self.rot90}f{flips or '-'}b{self.brightness:.2f}c{self.contrast:.2f}"
