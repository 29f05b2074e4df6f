"""Captions from a scene graph, with the platform focus of PE-MoE's textual domain gap.

Training captions are verbose and generic (GeoText-1652 style, several sentences, some directional);
test queries are concise and platform-specific (RoboSense Track 4 style). The satellite focus is layout
and relations, the drone focus object details, the ground focus the facade.
"""

from __future__ import annotations

import numpy as np

from geomoe.data.synthgeo.scene import Building


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _roof(b: Building) -> str:
    return f"{b.roof_color} {b.roof_type} roof"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _extras_sentences(b: Building, rng: np.random.Generator, directional: bool) -> list[str]:
    out = []
    for extra in b.extras:
        if directional:
            out.append(
                _pick(
                    rng,
                    [
                        f"There is {_article(extra.kind)} {extra.kind} to the {extra.side} of the building.",
                        f"To the {extra.side} of the building lies {_article(extra.kind)} {extra.kind}.",
                    ],
                )
            )
        else:
            out.append(f"There is {_article(extra.kind)} {extra.kind} next to the building.")
    return out


def satellite_train_caption(b: Building, rng: np.random.Generator) -> str:
    head = _pick(
        rng,
        [
            f"The image shows {_article(b.size)} {b.size} {b.shape} building with {_article(b.roof_color)} {_roof(b)}.",
            f"This is an aerial image of {_article(b.size)} {b.size} {b.shape} building "
            f"whose roof is {b.roof_color} and {b.roof_type}.",
        ],
    )
    road = f"A road runs along the {b.road_side} side of the building."
    trees = f"The building is surrounded by {b.tree_amount}." if b.trees else "There are no trees around the building."
    tail = _pick(rng, ["The surrounding area is covered with grass.", "The rest of the scene is open grassland."])
    return " ".join([head, road, *_extras_sentences(b, rng, directional=True), trees, tail])


def drone_train_caption(b: Building, rng: np.random.Generator) -> str:
    head = _pick(
        rng,
        [
            f"The image shows {_article(b.height_class)} {b.height_class} building "
            f"with {b.facade} walls and {_article(b.roof_color)} {_roof(b)}.",
            f"In this picture we can see {_article(b.height_class)} {b.height_class} building, "
            f"its walls are {b.facade} and its roof is {b.roof_color}.",
        ],
    )
    floors = f"The building has {b.floors} floors with {b.window_density}."
    extras = _extras_sentences(b, rng, directional=False)
    trees = f"There are {b.tree_amount} around it." if b.trees else "No trees are visible."
    left = "On the left side of the image there is a road." if rng.random() < 0.3 else "A road passes by the building."
    return " ".join([head, floors, *extras, trees, left])


def ground_train_caption(b: Building, rng: np.random.Generator) -> str:
    head = _pick(
        rng,
        [
            f"The image shows the facade of {_article(b.height_class)} {b.height_class} building "
            f"with {b.facade} walls.",
            f"This street level photo shows {_article(b.facade)} {b.facade} building facade.",
        ],
    )
    windows = f"The facade has {b.window_density} arranged over {b.floors} floors."
    roof = f"At the top a {b.roof_color} roof edge is visible."
    trees = "Trees stand in front of the building." if len(b.trees) > 3 else "The view of the building is unobstructed."
    return " ".join([head, windows, roof, trees])


def satellite_query(b: Building, rng: np.random.Generator) -> str:
    extra = f" with {_article(b.extras[0].kind)} {b.extras[0].kind} nearby" if b.extras else ""
    return _pick(
        rng,
        [
            f"satellite view of {_article(b.shape)} {b.shape} building with a {b.roof_color} roof{extra}",
            f"top-down view of a {b.size} {b.roof_color} {b.shape} roof{extra}",
        ],
    )


def drone_query(b: Building, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            f"drone view of a {b.height_class} building with {b.facade} walls and a {b.roof_color} roof",
            f"{b.height_class} {b.facade} building with a {b.roof_color} {b.roof_type} roof seen from a drone",
        ],
    )


def ground_query(b: Building, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            f"street view of a {b.facade} facade with {b.window_density} and a {b.roof_color} roof edge",
            f"ground photo of a {b.height_class} {b.facade} building",
        ],
    )


TRAIN_CAPTION = {"satellite": satellite_train_caption, "drone": drone_train_caption, "ground": ground_train_caption}
TEST_QUERY = {"satellite": satellite_query, "drone": drone_query, "ground": ground_query}
