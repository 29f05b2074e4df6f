"""Localization scenes for the CVOGL layout: a satellite tile of several objects and drone queries of one.

A tile is a 3x3 grid of cells, most holding one object (a building or a court, pond, parking lot or
roundabout). A query is an oblique drone view centred near the target with the click on the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from geomoe.core.data.synthgeo.render import SUPERSAMPLE, ObliqueCamera, _noise_ground, draw_building, draw_extra
from geomoe.core.data.synthgeo.scene import EXTRAS, FACADE_COLORS, GRASS, ROAD, ROOF_COLORS, Building, Extra

GRID = 3


@dataclass(frozen=True)
class TileObject:
    item: Building | Extra
    class_name: str

    def bounds(self) -> tuple[float, float, float, float]:
        """Axis-aligned unit box (x1, y1, x2, y2) of what is drawn on the tile."""
        if isinstance(self.item, Building):
            xs, ys = zip(*self.item.footprint(), strict=True)
            return min(xs), min(ys), max(xs), max(ys)
        (cx, cy), s = self.item.center, self.item.size
        hx, hy = {"pond": (1.2, 0.8), "roundabout": (1.0, 1.0)}.get(self.item.kind, (1.2, 0.7))
        return cx - hx * s, cy - hy * s, cx + hx * s, cy + hy * s

    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.bounds()
        return (x1 + x2) / 2, (y1 + y2) / 2


def _building_class(floors: int) -> str:
    return "building_residential" if floors <= 3 else ("building_retail" if floors <= 6 else "building_office")


def sample_tile(rng: np.random.Generator) -> list[TileObject]:
    objects = []
    cell = 1.0 / GRID
    for gy in range(GRID):
        for gx in range(GRID):
            if rng.random() < 0.2:
                continue
            cx, cy = (gx + 0.5 + rng.uniform(-0.12, 0.12)) * cell, (gy + 0.5 + rng.uniform(-0.12, 0.12)) * cell
            if rng.random() < 0.6:
                half = float(rng.uniform(0.07, 0.12))
                aspect = float(rng.uniform(0.55, 1.0))
                shape = str(rng.choice(("square", "rectangular", "l-shaped")))
                floors = int(rng.choice((1, 2, 4, 6, 9)))
                b = Building(
                    building_id=f"t{gx}{gy}",
                    shape=shape,
                    size="small",
                    roof_color=str(rng.choice(list(ROOF_COLORS))),
                    roof_type=str(rng.choice(("flat", "pitched"))),
                    floors=floors,
                    facade=str(rng.choice(list(FACADE_COLORS))),
                    center=(float(cx), float(cy)),
                    half_wh=(half, half * aspect),
                    road_side="north",
                    extras=(),
                    trees=(),
                )
                objects.append(TileObject(b, _building_class(floors)))
            else:
                kind = str(rng.choice(EXTRAS))
                extra = Extra(kind, "north", (float(cx), float(cy)), float(rng.uniform(0.06, 0.09)))
                objects.append(TileObject(extra, kind.replace(" ", "_")))
    if not objects:  # an empty tile has nothing to localise; always keep one object
        return sample_tile(rng)
    return objects


def draw_tile(objects: list[TileObject], canvas: int, rng: np.random.Generator, extrude: float = 0.0) -> Image.Image:
    image = _noise_ground(canvas, GRASS, rng)
    draw = ImageDraw.Draw(image)
    for k in range(1, GRID):
        pos = k * canvas / GRID
        draw.line([pos, 0, pos, canvas], fill=ROAD, width=max(2, canvas // 60))
        draw.line([0, pos, canvas, pos], fill=ROAD, width=max(2, canvas // 60))
    for obj in objects:
        if isinstance(obj.item, Building):
            draw_building(draw, obj.item, canvas, extrude)
        else:
            draw_extra(draw, obj.item, canvas)
    return image


def render_tile(objects: list[TileObject], size: int, rng: np.random.Generator) -> Image.Image:
    return draw_tile(objects, size * SUPERSAMPLE, rng).resize((size, size), Image.Resampling.BILINEAR)


# The cell-kinds world (``planted.cell_kinds``): a tile cell of a kind other than plain shows everything in it
# through its kind's colour transform; a drone query shows true colours. Three transforms no one linear map
# undoes together.
CELL_KINDS = ("plain", "inverted", "rotated", "inverted rotated")


def _transformed(cell: np.ndarray, kind: str) -> np.ndarray:
    if "rotated" in kind:
        cell = cell[..., [1, 2, 0]]
    return 255 - cell if "inverted" in kind else cell


def cell_kinds(share: float, rng: np.random.Generator) -> list[str]:
    """Each of the tile's GRID x GRID cells (row-major): plain, or with probability ``share`` another kind."""
    return [str(rng.choice(CELL_KINDS[1:])) if rng.random() < share else "plain" for _ in range(GRID * GRID)]


def with_cell_kinds(tile: Image.Image, kinds: list[str]) -> Image.Image:
    """The tile with each cell (a GRID x GRID split of its pixels, the layout's cells) shown as its kind."""
    pixels = np.asarray(tile.convert("RGB")).copy()
    edges = [round(k * pixels.shape[0] / GRID) for k in range(GRID + 1)]
    for at, kind in enumerate(kinds):
        (y0, y1), (x0, x1) = edges[at // GRID : at // GRID + 2], edges[at % GRID : at % GRID + 2]
        pixels[y0:y1, x0:x1] = _transformed(pixels[y0:y1, x0:x1], kind)
    return Image.fromarray(pixels)


def render_query(
    objects: list[TileObject], target: TileObject, tile_size: int, query_size: int, rng: np.random.Generator
) -> tuple[Image.Image, tuple[float, float]]:
    """Oblique drone view around ``target``; returns the image and the click (target centre) in its pixels."""
    canvas = tile_size * SUPERSAMPLE
    topdown = draw_tile(objects, canvas, rng, extrude=canvas * 0.004)
    x1, y1, x2, y2 = target.bounds()
    extent = max(x2 - x1, y2 - y1)
    offset = rng.uniform(-0.25, 0.25, size=2) * extent  # the target is near, not exactly at, the centre
    centre = target.center()
    camera = ObliqueCamera(
        heading=float(rng.uniform(0, 360)),
        keep=float(np.clip(3.0 * extent, 0.25, 0.6)),
        tilt=float(rng.uniform(0.1, 0.3)),
        center=(centre[0] + float(offset[0]), centre[1] + float(offset[1])),
    )
    click = camera.project((centre[0] * canvas, centre[1] * canvas), canvas, query_size)
    return camera.render(topdown, query_size), click
