"""Captions from a scene graph, with the two gaps PE-MoE is about (sec. 1 and 3.1).

Platform heterogeneity: a caption names only attributes its view shows (``scene.VISIBLE``), so the three
platforms are described with different words: the satellite by footprint, roof and the layout around it with
directions; the drone by height, facade, roof, rooftop equipment and nearby objects; the ground by facade
material, windows, entrance, sign and street furniture.

Textual domain gap: training captions are generic and verbose (GeoText-1652 style): one template for every
platform, a generic opening, a few of the view's attributes picked at random whether or not they are what tells
this view's buildings apart, and filler sentences about the scene. Test queries are concise and platform-specific
(RoboSense Track 4 style): a platform phrase and the attributes that platform's queries are about.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geomoe.core.data.synthgeo.scene import VISIBLE, Building

OPENINGS = (
    "The image shows a building with {}.",
    "In this picture we can see a building with {}.",
    "This is a photo of a building with {}.",
)
FILLERS = (
    "The weather appears to be clear.",
    "The scene looks calm and orderly.",
    "The picture was taken during the day.",
    "The overall environment appears clean and well maintained.",
    "No people are visible in the image.",
    "The colours in the image look natural.",
)


def _a(word: str) -> str:
    """``word`` with its indefinite article (by sound: "an l-shaped", "an 8-floor")."""
    vowel_sound = word[0] in "aeiou8" or word.startswith(("l-", "11", "18"))
    return f"{'an' if vowel_sound else 'a'} {word}"


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _rooftop(b: Building) -> str:
    assert b.rooftop is not None
    return b.rooftop if b.rooftop.endswith("s") else _a(b.rooftop)


def attribute_phrases(b: Building, platform: str) -> dict[str, str]:
    """Noun phrases of the attributes this building shows on ``platform`` (absent ones left out)."""
    seen = VISIBLE[platform]
    phrases = {
        "shape": f"{_a(b.shape)} footprint",
        "size": f"{_a(b.size)} footprint",
        "roof": f"{_a(b.roof_color)} {b.roof_type} roof",
        "facade": f"{_a(b.material)} facade",
        "floors": f"{b.floors} floor{'s' if b.floors > 1 else ''}",
        "windows": b.window_density,
        "entrance": _a(b.entrance),
        "trees": b.tree_amount,
    }
    if b.rooftop:
        phrases["rooftop"] = f"{_rooftop(b)} on the roof"
    if b.sign:
        phrases["sign"] = f"{_a(b.sign)} sign above the entrance"
    if b.furniture:
        phrases["furniture"] = f"{_a(b.furniture)} in front"
    if b.extras and "layout" not in seen:  # the satellite names them with their directions
        phrases["extras"] = " and ".join(f"{_a(e.kind)} nearby" for e in b.extras)
    layout = [f"a road along its {b.road_side} side"] + [f"{_a(e.kind)} to the {e.side}" for e in b.extras]
    phrases["layout"] = ", ".join(layout)
    return {k: v for k, v in phrases.items() if k in seen}


def _generic_sentence(attribute: str, phrase: str) -> str:
    if attribute == "layout":
        return f"The building has {phrase}."
    if attribute in ("extras", "trees", "furniture"):
        return f"There {'are' if phrase.endswith('trees') else 'is'} {phrase} around the building.".replace(
            "in front around the building", "in front of the building"
        )
    return f"The building has {phrase}."


def generic_caption(b: Building, platform: str, rng: np.random.Generator) -> str:
    """A verbose, generic training caption: one template for every platform, random attributes of the view."""
    phrases = attribute_phrases(b, platform)
    names = [str(n) for n in rng.permutation(sorted(phrases))]
    chosen = names[: int(rng.integers(2, 5))]
    opening = _pick(rng, OPENINGS).format(phrases[chosen[0]])
    body = [_generic_sentence(n, phrases[n]) for n in chosen[1:]]
    fillers = [str(f) for f in rng.choice(FILLERS, size=2, replace=False)]
    return " ".join([opening, *body, *fillers])


def satellite_query(b: Building, rng: np.random.Generator) -> str:
    around = f"a road to the {b.road_side}" + "".join(f" and {_a(e.kind)} to the {e.side}" for e in b.extras[:1])
    return _pick(
        rng,
        [
            f"satellite view of {_a(b.shape)} building with {_a(b.roof_color)} roof, {around}",
            f"top-down view of a {b.size} {b.roof_color} {b.shape} roof with {around}",
        ],
    )


def drone_query(b: Building, rng: np.random.Generator) -> str:
    on_top = f" and {_rooftop(b)} on top" if b.rooftop else ""
    nearby = f", next to {_a(b.extras[0].kind)}" if b.extras else ""
    return _pick(
        rng,
        [
            f"drone view of {_a(str(b.floors))}-floor {b.material} building with {_a(b.roof_color)} {b.roof_type} roof"
            f"{on_top}{nearby}",
            f"{b.height_class} {b.material} building with {_a(b.roof_color)} roof{on_top} seen from a drone{nearby}",
        ],
    )


def ground_query(b: Building, rng: np.random.Generator) -> str:
    sign = f", {_a(b.sign)} sign" if b.sign else ""
    furniture = f" and {_a(b.furniture)} in front" if b.furniture else ""
    return _pick(
        rng,
        [
            f"street view of {_a(b.material)} facade with {_a(b.entrance)}{sign}{furniture}",
            f"ground photo of a {b.height_class} {b.material} building with {b.window_density}, "
            f"{_a(b.entrance)}{furniture}",
        ],
    )


def neutral_query(b: Building, rng: np.random.Generator) -> str:
    """A query that does not say which platform's image it asks for (the query-cue null world): no platform
    phrase, and only attributes that two or more platforms show (roof, facade, floors, trees), for every platform
    alike."""
    trees = "" if not b.trees else f" and {b.tree_amount} around"
    floors = f"{b.floors} floor{'s' if b.floors > 1 else ''}"
    return _pick(
        rng,
        [
            f"{_a(b.material)} building with {_a(b.roof_color)} {b.roof_type} roof and {floors}{trees}",
            f"{b.floors}-floor building of {b.material} with {_a(b.roof_color)} roof{trees}",
        ],
    )


def scene_caption(b: Building, platform: str) -> str:
    """What a perfect captioner writes for a view: every attribute it shows, in one platform-focused sentence
    (the CGRS re-ranking upper bound)."""
    phrases = attribute_phrases(b, platform)
    subject = {"satellite": "satellite view of", "drone": "drone view of", "ground": "street view of"}[platform]
    return f"{subject} a building with " + ", ".join(phrases[k] for k in VISIBLE[platform] if k in phrases) + "."


_STOPWORDS = "a an the of with and to in on at its is are has have there this that we can see it building image picture"
STOPWORDS = frozenset(_STOPWORDS.split()) | {"photo", "view", "seen", "from"}


def content_words(text: str) -> set[str]:
    """The words of a caption that carry content (lowercase, stopwords out)."""
    words = "".join(c if c.isalnum() or c == "-" else " " for c in text.lower()).split()
    return {w for w in words if w not in STOPWORDS and not w.isdigit()}


def vocabulary_overlap(texts: dict[str, list[str]]) -> dict[str, float]:
    """Jaccard overlap of the content vocabularies of each pair of platforms ("satellite|drone": 0.2, ...)."""
    vocab = {p: set().union(*(content_words(t) for t in ts)) if ts else set() for p, ts in texts.items()}
    names = sorted(vocab)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            union = vocab[a] | vocab[b]
            out[f"{a}|{b}"] = round(len(vocab[a] & vocab[b]) / len(union), 3) if union else 0.0
    return out


def _generic(platform: str) -> Callable[[Building, np.random.Generator], str]:
    return lambda b, rng: generic_caption(b, platform, rng)


TRAIN_CAPTION = {p: _generic(p) for p in VISIBLE}
TEST_QUERY = {"satellite": satellite_query, "drone": drone_query, "ground": ground_query}
