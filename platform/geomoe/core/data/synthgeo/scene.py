"""Scene graphs of synthgeo: one building with its surroundings, in unit coordinates (x east, y south).

Everything visible in a rendered view is an attribute here, and every caption is generated from these
attributes, so text and pixels agree by construction. Randomness comes only from the generator passed in.

Platforms see different things (PE-MoE sec. 1 and 3.1): ``VISIBLE`` says which attributes each platform's view
shows, and so which a caption of that view may mention. The satellite sees the roof from above, the footprint and
the layout of the surroundings with their directions (north is up); the drone sees roof and facade obliquely, the
height, rooftop equipment (too small for a satellite tile: an assumption) and the nearby objects, with no
direction (its heading is random); the ground sees the facade's material, windows, entrance, sign and the street
furniture in front, none of which shows from above.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

ROOF_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (186, 48, 40),
    "blue": (48, 84, 186),
    "green": (52, 140, 64),
    "gray": (128, 128, 132),
    "white": (232, 232, 226),
    "orange": (232, 132, 36),
    "black": (36, 36, 40),
    "yellow": (226, 204, 58),
}
FACADE_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (236, 234, 228),
    "beige": (214, 196, 160),
    "brick": (150, 70, 50),
    "gray": (140, 142, 148),
    "glass": (90, 140, 170),
}
SHAPES = ("square", "rectangular", "l-shaped", "round")
ROOF_TYPES = ("flat", "pitched", "domed")
SIDES = ("north", "south", "east", "west")
EXTRAS = ("tennis court", "basketball court", "pond", "parking lot", "roundabout")
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "tennis court": (70, 130, 90),
    "basketball court": (196, 120, 70),
    "pond": (60, 110, 200),
    "parking lot": (92, 92, 96),
    "roundabout": (110, 110, 112),
}
MATERIALS = {  # facade colour -> the material a caption names
    "white": "white plaster",
    "beige": "beige stone",
    "brick": "red brick",
    "gray": "gray concrete",
    "glass": "glass",
}
ENTRANCES: dict[str, tuple[int, int, int]] = {
    "glass door": (150, 200, 220),
    "wooden door": (110, 70, 36),
    "arched doorway": (40, 36, 34),
    "double door": (40, 90, 60),
}
SIGN_COLORS: dict[str, tuple[int, int, int]] = {"red": (200, 40, 40), "blue": (40, 70, 200), "yellow": (230, 200, 40)}
FURNITURE = ("bench", "lamp post", "bus stop", "bicycle rack")
ROOFTOP_ITEMS = ("solar panels", "water tank", "antenna mast")
# What each platform's view shows (and a caption of it may name). "layout": the road's and the nearby objects'
# directions from the building; "extras": the nearby objects themselves.
VISIBLE: dict[str, tuple[str, ...]] = {
    "satellite": ("shape", "size", "roof", "layout", "extras", "trees"),
    "drone": ("roof", "facade", "floors", "rooftop", "extras", "trees"),
    "ground": ("facade", "floors", "windows", "entrance", "sign", "furniture", "trees"),
}
# The platform-conflict world (``planted.platform_conflict``): the drone shows each roof colour as another, the
# ground each facade as another; fixed derangements, so a colour word means one thing per platform.
CONFLICTING_ROOF = dict(zip(ROOF_COLORS, list(ROOF_COLORS)[4:] + list(ROOF_COLORS)[:4], strict=True))
CONFLICTING_FACADE = dict(zip(FACADE_COLORS, list(FACADE_COLORS)[2:] + list(FACADE_COLORS)[:2], strict=True))
GRASS = (96, 138, 70)
ROAD = (70, 70, 74)
TREE = (34, 96, 40)


@dataclass(frozen=True)
class Extra:
    kind: str
    side: str
    center: tuple[float, float]
    size: float


@dataclass(frozen=True)
class Building:
    building_id: str
    shape: str
    size: str  # small | large
    roof_color: str
    roof_type: str
    floors: int
    facade: str
    center: tuple[float, float]
    half_wh: tuple[float, float]
    road_side: str
    extras: tuple[Extra, ...]
    trees: tuple[tuple[float, float, float], ...]  # (x, y, radius)
    ground_tint: tuple[int, int, int] = field(default=GRASS)
    entrance: str = "wooden door"  # ground only
    sign: str | None = None  # a sign's colour above the entrance (ground only)
    furniture: str | None = None  # street furniture in front (ground only)
    rooftop: str | None = None  # rooftop equipment (drone only)

    @property
    def material(self) -> str:
        return MATERIALS[self.facade]

    @property
    def height_class(self) -> str:
        return "low-rise" if self.floors <= 2 else ("mid-rise" if self.floors <= 6 else "high-rise")

    @property
    def window_density(self) -> str:
        return "many windows" if self.floors >= 4 or self.shape == "rectangular" else "few windows"

    @property
    def tree_amount(self) -> str:
        return "no trees" if not self.trees else ("a few trees" if len(self.trees) <= 3 else "many trees")

    def footprint(self) -> list[tuple[float, float]]:
        """Polygon of the footprint in unit coordinates (a round footprint is approximated by 24 points)."""
        (cx, cy), (hw, hh) = self.center, self.half_wh
        if self.shape == "round":
            angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            return [(cx + hw * np.cos(a), cy + hh * np.sin(a)) for a in angles]
        x0, y0, x1, y1 = cx - hw, cy - hh, cx + hw, cy + hh
        if self.shape == "l-shaped":  # the north-east quarter is missing
            return [(x0, y0), (cx, y0), (cx, cy), (x1, cy), (x1, y1), (x0, y1)]
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _shift(color: tuple[int, int, int], by: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + d, 0, 255)) for c, d in zip(color, by, strict=True))
    return r, g, b


def _side_center(side: str, offset: float) -> tuple[float, float]:
    return {
        "north": (0.5, offset),
        "south": (0.5, 1 - offset),
        "west": (offset, 0.5),
        "east": (1 - offset, 0.5),
    }[side]


def twin_of(original: Building, building_id: str, rng: np.random.Generator) -> Building:
    """The attribute-twin world's (``planted.attribute_twins``) near-duplicate of ``original``: everything the
    same but the roof colour (seen by satellite and drone) and the facade (drone and ground), each drawn from the
    other values: the satellite's and the ground's views differ from the original's in one attribute each, the
    drone's (which shows both) in two."""
    roof = str(rng.choice([c for c in ROOF_COLORS if c != original.roof_color]))
    facade = str(rng.choice([c for c in FACADE_COLORS if c != original.facade]))
    return replace(original, building_id=building_id, roof_color=roof, facade=facade)


def sample_building(building_id: str, rng: np.random.Generator) -> Building:
    shape = str(rng.choice(SHAPES))
    size = str(rng.choice(("small", "large")))
    half = 0.12 if size == "small" else 0.19
    aspect = 1.0 if shape in ("square", "round") else float(rng.uniform(0.5, 0.7))
    horizontal = bool(rng.integers(0, 2))
    half_wh = (half, half * aspect) if horizontal else (half * aspect, half)
    if shape == "round":
        half_wh = (half, half)
    roof_type = "domed" if shape == "round" else str(rng.choice(ROOF_TYPES[:2]))
    sides = list(rng.permutation(SIDES))
    road_side = str(sides.pop())
    n_extras = int(rng.integers(0, 3))
    kinds = rng.choice(EXTRAS, size=n_extras, replace=False)
    extras = tuple(
        Extra(str(kind), str(side), _side_center(str(side), 0.14), float(rng.uniform(0.08, 0.11)))
        for kind, side in zip(kinds, sides, strict=False)
    )
    n_trees = int(rng.choice((0, 2, 3, 6, 9)))
    trees: list[tuple[float, float, float]] = []
    while len(trees) < n_trees:
        x, y = rng.uniform(0.06, 0.94, size=2)
        if abs(x - 0.5) > half + 0.06 or abs(y - 0.5) > half + 0.06:
            trees.append((float(x), float(y), float(rng.uniform(0.03, 0.05))))
    jitter = rng.uniform(-8, 8, size=3).astype(int)
    entrance = str(rng.choice(list(ENTRANCES)))
    sign = str(rng.choice(list(SIGN_COLORS))) if rng.random() < 0.6 else None
    furniture = str(rng.choice(FURNITURE)) if rng.random() < 0.75 else None
    rooftop = str(rng.choice(ROOFTOP_ITEMS)) if rng.random() < 0.7 else None
    return Building(
        building_id=building_id,
        shape=shape,
        size=size,
        roof_color=str(rng.choice(list(ROOF_COLORS))),
        roof_type=roof_type,
        floors=int(rng.choice((1, 2, 3, 4, 5, 6, 8, 10, 12))),
        facade=str(rng.choice(list(FACADE_COLORS))),
        center=(0.5 + float(rng.uniform(-0.03, 0.03)), 0.5 + float(rng.uniform(-0.03, 0.03))),
        half_wh=half_wh,
        road_side=road_side,
        extras=extras,
        trees=tuple(trees),
        ground_tint=_shift(GRASS, jitter),
        entrance=entrance,
        sign=sign,
        furniture=furniture,
        rooftop=rooftop,
    )
