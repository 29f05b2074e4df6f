"""Rendering synthgeo views with PIL: top-down satellite, oblique drone, low ground-level facade.

Drawing happens on a 2x canvas and is downsampled once, which anti-aliases edges cheaply.
The drone view is a pseudo-3D top-down drawing (facades extruded by the floor count), rotated to a
heading, cropped to an altitude and warped by a camera-tilt homography; ``project`` maps any top-down
point into the final view, which is how a localization query gets its click.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from geomoe.core.data.synthgeo.scene import (
    ENTRANCES,
    EXTRA_COLORS,
    FACADE_COLORS,
    ROAD,
    ROOF_COLORS,
    SIGN_COLORS,
    TREE,
    Building,
    Extra,
)

SUPERSAMPLE = 2
Point = tuple[float, float]


def _shade(color: Sequence[int], factor: float) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c * factor, 0, 255)) for c in color)
    return r, g, b


def _noise_ground(size: int, tint: Sequence[int], rng: np.random.Generator) -> Image.Image:
    base = np.asarray(tint, dtype=np.float32)[None, None, :]
    noise = rng.normal(0.0, 9.0, size=(size // 8 + 1, size // 8 + 1, 1)).astype(np.float32)
    noise = np.kron(noise, np.ones((8, 8, 1), dtype=np.float32))[:size, :size]
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def draw_extra(draw: ImageDraw.ImageDraw, extra: Extra, scale: float) -> None:
    cx, cy = extra.center[0] * scale, extra.center[1] * scale
    half = extra.size * scale
    color = EXTRA_COLORS[extra.kind]
    if extra.kind == "pond":
        draw.ellipse([cx - half * 1.2, cy - half * 0.8, cx + half * 1.2, cy + half * 0.8], fill=color)
    elif extra.kind == "roundabout":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=color)
        draw.ellipse([cx - half * 0.45, cy - half * 0.45, cx + half * 0.45, cy + half * 0.45], fill=(70, 150, 70))
    else:
        draw.rectangle([cx - half * 1.2, cy - half * 0.7, cx + half * 1.2, cy + half * 0.7], fill=color)
        line = (240, 240, 240)
        if extra.kind == "parking lot":
            for i in range(-2, 3):
                x = cx + i * half * 0.45
                draw.line([x, cy - half * 0.7, x, cy - half * 0.1], fill=line, width=max(1, int(scale / 128)))
        else:
            draw.rectangle([cx - half * 1.1, cy - half * 0.6, cx + half * 1.1, cy + half * 0.6], outline=line)
            draw.line([cx, cy - half * 0.6, cx, cy + half * 0.6], fill=line)


def draw_building(
    draw: ImageDraw.ImageDraw, b: Building, scale: float, extrude: float = 0.0, rooftop: bool = False
) -> None:
    """Footprint and roof; with ``extrude`` > 0 the roof is lifted by that many px per floor (oblique look);
    ``rooftop``: draw the rooftop equipment (the drone's close view; below a satellite tile's resolution)."""
    base = [(x * scale, y * scale) for x, y in b.footprint()]
    roof_color, facade_color = ROOF_COLORS[b.roof_color], FACADE_COLORS[b.facade]
    lift = extrude * b.floors
    if lift > 0:
        roof = [(x, y - lift) for x, y in base]
        for i in range(len(base)):
            j = (i + 1) % len(base)
            draw.polygon([base[i], base[j], roof[j], roof[i]], fill=facade_color)
        draw.polygon(base, fill=facade_color)
        _draw_windows(draw, base, lift, b.floors)
    else:
        roof = base
    draw.polygon(roof, fill=roof_color, outline=_shade(roof_color, 0.7))
    xs, ys = [p[0] for p in roof], [p[1] for p in roof]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if b.roof_type == "pitched":  # the half beyond the ridge is in shade
        axis = 1 if x1 - x0 >= y1 - y0 else 0
        ridge = (y0 + y1) / 2 if axis == 1 else (x0 + x1) / 2
        shaded = clip_halfplane(roof, axis, ridge)
        if len(shaded) >= 3:
            draw.polygon(shaded, fill=_shade(roof_color, 0.75))
    elif b.roof_type == "domed":
        for k, f in ((0.66, 1.12), (0.33, 1.25)):
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * k, (y1 - y0) / 2 * k
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_shade(roof_color, f))
    if rooftop and b.rooftop:
        _draw_rooftop(draw, b.rooftop, (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2)


def _draw_rooftop(draw: ImageDraw.ImageDraw, item: str, cx: float, cy: float, half: float) -> None:
    if item == "solar panels":  # a 2 x 3 grid of dark blue panels
        w, h = half * 0.3, half * 0.22
        for row in range(2):
            for col in range(3):
                x, y = cx + (col - 1.5) * w * 1.15, cy + (row - 1) * h * 1.2
                draw.rectangle([x, y, x + w, y + h], fill=(30, 40, 110), outline=(180, 190, 210))
    elif item == "water tank":
        radius = half * 0.35
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        draw.ellipse(box, fill=(170, 170, 175), outline=(60, 60, 60), width=2)
    else:  # antenna mast: a dark cross with a red tip
        mast = half * 0.55
        draw.line([cx, cy - mast, cx, cy + mast], fill=(30, 30, 30), width=2)
        draw.line([cx - mast * 0.5, cy - mast * 0.4, cx + mast * 0.5, cy - mast * 0.4], fill=(30, 30, 30), width=2)
        draw.ellipse([cx - 3, cy - mast - 3, cx + 3, cy - mast + 3], fill=(220, 30, 30))


def clip_halfplane(polygon: list[Point], axis: int, value: float) -> list[Point]:
    """The part of ``polygon`` where coordinate ``axis`` >= ``value`` (Sutherland-Hodgman, one plane)."""
    out: list[Point] = []
    for i, current in enumerate(polygon):
        previous = polygon[i - 1]
        inside_now, inside_before = current[axis] >= value, previous[axis] >= value
        if inside_now != inside_before:
            t = (value - previous[axis]) / (current[axis] - previous[axis])
            out.append((previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])))
        if inside_now:
            out.append(current)
    return out


def _draw_windows(draw: ImageDraw.ImageDraw, base: list[Point], lift: float, floors: int) -> None:
    xs, ys = [p[0] for p in base], [p[1] for p in base]
    x0, x1, bottom = min(xs), max(xs), max(ys)
    rows, cols = min(floors, 12), max(2, int((x1 - x0) / 10))
    row_h, col_w = lift / max(rows, 1), (x1 - x0) / cols
    for r in range(rows):
        for c in range(cols):
            wx, wy = x0 + (c + 0.3) * col_w, bottom - lift + (r + 0.25) * row_h
            draw.rectangle([wx, wy, wx + col_w * 0.4, wy + row_h * 0.45], fill=(40, 50, 70))


def draw_topdown(
    b: Building, canvas: int, rng: np.random.Generator, extrude: float = 0.0, rooftop: bool = False
) -> Image.Image:
    image = _noise_ground(canvas, b.ground_tint, rng)
    draw = ImageDraw.Draw(image)
    band = 0.1 * canvas
    road = {
        "north": [0, 0, canvas, band],
        "south": [0, canvas - band, canvas, canvas],
        "west": [0, 0, band, canvas],
        "east": [canvas - band, 0, canvas, canvas],
    }[b.road_side]
    draw.rectangle(road, fill=ROAD)
    for extra in b.extras:
        draw_extra(draw, extra, canvas)
    draw_building(draw, b, canvas, extrude, rooftop)
    for x, y, r in b.trees:
        cx, cy, rad = x * canvas, y * canvas, r * canvas
        draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=TREE, outline=_shade(TREE, 0.6))
    return image


def render_satellite(b: Building, size: int, rng: np.random.Generator) -> Image.Image:
    canvas = size * SUPERSAMPLE
    return draw_topdown(b, canvas, rng).resize((size, size), Image.Resampling.BILINEAR)


def homography(src: Sequence[Point], dst: Sequence[Point]) -> np.ndarray:
    """3x3 matrix H with H @ [x, y, 1] ~ [u, v, 1] for the four point pairs src -> dst."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    coeffs = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(coeffs, 1.0).reshape(3, 3)


@dataclass(frozen=True)
class ObliqueCamera:
    """Heading (deg), altitude as the fraction of the canvas kept, and tilt (0 = nadir)."""

    heading: float
    keep: float
    tilt: float
    center: Point = (0.5, 0.5)

    @classmethod
    def sample(cls, rng: np.random.Generator, center: Point = (0.5, 0.5)) -> ObliqueCamera:
        return cls(float(rng.uniform(0, 360)), float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.15, 0.35)), center)

    def _view_to_canvas(self, canvas: int, out: int) -> np.ndarray:
        """Homography from output-view pixels to canvas pixels (rotation, crop, tilt combined)."""
        half = self.keep * canvas / 2
        spread = self.tilt * half
        # far edge (top of the view) covers a wider strip of ground than the near edge
        quad = [(-half - spread, -half), (half + spread, -half), (half, half), (-half, half)]
        theta = np.deg2rad(self.heading)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        cx, cy = self.center[0] * canvas, self.center[1] * canvas
        src = [(float(x), float(y)) for x, y in (rot @ np.array(p) + np.array([cx, cy]) for p in quad)]
        corners = [(0.0, 0.0), (float(out), 0.0), (float(out), float(out)), (0.0, float(out))]
        return homography(corners, src)

    def render(self, topdown: Image.Image, out: int, fill: tuple[int, int, int] = (96, 138, 70)) -> Image.Image:
        """The view of ``topdown`` through this camera; ground beyond the canvas is painted ``fill``."""
        canvas = topdown.size[0]
        h = self._view_to_canvas(canvas, out * SUPERSAMPLE)
        coeffs = tuple((h / h[2, 2]).flatten()[:8])
        big = topdown.transform(
            (out * SUPERSAMPLE,) * 2, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
        )
        return big.resize((out, out), Image.Resampling.BILINEAR)

    def project(self, point: Point, canvas: int, out: int) -> Point:
        """Where a canvas point (in canvas pixels) lands in the ``out``-pixel view."""
        h_inv = np.linalg.inv(self._view_to_canvas(canvas, out))
        u, v, w = h_inv @ np.array([point[0], point[1], 1.0])
        return float(u / w), float(v / w)


def render_drone(b: Building, size: int, rng: np.random.Generator) -> Image.Image:
    canvas = size * SUPERSAMPLE * 2
    topdown = draw_topdown(b, canvas, rng, extrude=canvas * 0.012, rooftop=True)
    return ObliqueCamera.sample(rng, center=b.center).render(topdown, size, fill=b.ground_tint)


def render_ground(b: Building, size: int, rng: np.random.Generator) -> Image.Image:
    """A low, partial, cluttered street-level view of the building's facade."""
    c = size * SUPERSAMPLE
    image = Image.new("RGB", (c, c), (150, 190, 230))
    draw = ImageDraw.Draw(image)
    horizon = int(c * rng.uniform(0.72, 0.82))
    draw.rectangle([0, horizon, c, c], fill=(120, 118, 112))
    width = c * (0.5 if b.size == "small" else 0.8) * float(rng.uniform(0.9, 1.3))
    left = c / 2 - width / 2 + float(rng.uniform(-0.25, 0.25)) * c  # partial views cut the facade
    height = min(0.12 + 0.055 * b.floors, 0.66) * c
    top = horizon - height
    facade, roof = FACADE_COLORS[b.facade], ROOF_COLORS[b.roof_color]
    draw.rectangle([left, top, left + width, horizon], fill=facade)
    if b.roof_type == "pitched":
        draw.polygon([(left - 4, top), (left + width + 4, top), (left + width / 2, top - 0.12 * c)], fill=roof)
    elif b.roof_type == "domed":
        draw.ellipse([left + width * 0.2, top - 0.12 * c, left + width * 0.8, top + 0.1 * c], fill=roof)
        draw.rectangle([left, top, left + width, horizon], fill=facade)
    draw.rectangle([left - 3, top - 0.035 * c, left + width + 3, top], fill=roof)
    rows, cols = min(b.floors, 12), max(2, int(width / (0.09 * c)) + (2 if b.window_density == "many windows" else 0))
    row_h, col_w = height / (rows + 0.6), width / cols
    for r in range(rows):
        for k in range(cols):
            x, y = left + (k + 0.3) * col_w, top + (r + 0.25) * row_h
            draw.rectangle([x, y, x + col_w * 0.4, y + row_h * 0.5], fill=(50, 62, 82))
    _draw_entrance(draw, b, left + width / 2, horizon, c)
    if b.furniture:
        _draw_furniture(draw, b.furniture, left + width * float(rng.uniform(0.1, 0.3)), horizon, c)
    _ground_clutter(draw, c, horizon, rng, trees=len(b.trees) > 3)
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _draw_entrance(draw: ImageDraw.ImageDraw, b: Building, cx: float, horizon: float, c: int) -> None:
    """The entrance at the facade's foot, by its kind, and the sign above it."""
    w, h = 0.035 * c, 0.12 * c
    color = ENTRANCES[b.entrance]
    if b.entrance == "double door":
        draw.rectangle([cx - 2 * w, horizon - h, cx - 0.1 * w, horizon], fill=color)
        draw.rectangle([cx + 0.1 * w, horizon - h, cx + 2 * w, horizon], fill=color)
    elif b.entrance == "arched doorway":
        draw.rectangle([cx - w, horizon - h * 0.8, cx + w, horizon], fill=color)
        draw.ellipse([cx - w, horizon - h - 0.2 * w, cx + w, horizon - h * 0.6], fill=color)
    else:
        draw.rectangle([cx - w, horizon - h, cx + w, horizon], fill=color, outline=(30, 30, 30))
    if b.sign:
        draw.rectangle([cx - 2.6 * w, horizon - h - 0.07 * c, cx + 2.6 * w, horizon - h - 0.015 * c],
                       fill=SIGN_COLORS[b.sign])  # fmt: skip


def _draw_furniture(draw: ImageDraw.ImageDraw, kind: str, x: float, horizon: float, c: int) -> None:
    """Street furniture on the pavement in front of the facade."""
    base, line = horizon + 0.04 * c, max(1, c // 64)
    if kind == "bench":
        draw.rectangle([x, base - 0.04 * c, x + 0.14 * c, base - 0.025 * c], fill=(120, 80, 40))
        for leg in (x + 0.01 * c, x + 0.12 * c):
            draw.line([leg, base - 0.025 * c, leg, base], fill=(40, 40, 40), width=line)
    elif kind == "lamp post":
        draw.line([x, base, x, horizon - 0.3 * c], fill=(40, 40, 44), width=line)
        draw.ellipse([x - 0.02 * c, horizon - 0.33 * c, x + 0.02 * c, horizon - 0.29 * c], fill=(250, 230, 120))
    elif kind == "bus stop":
        draw.rectangle([x, base - 0.16 * c, x + 0.16 * c, base], outline=(90, 100, 110), width=line)
        draw.rectangle([x - 0.01 * c, base - 0.18 * c, x + 0.17 * c, base - 0.16 * c], fill=(70, 110, 150))
    else:  # bicycle rack: a row of hoops
        for k in range(4):
            hx = x + k * 0.035 * c
            draw.arc([hx, base - 0.05 * c, hx + 0.03 * c, base + 0.01 * c], 180, 360, fill=(150, 150, 160), width=line)


def _ground_clutter(draw: ImageDraw.ImageDraw, c: int, horizon: int, rng: np.random.Generator, trees: bool) -> None:
    for _ in range(int(rng.integers(0, 3))):
        x = float(rng.uniform(0, c))
        color = tuple(int(v) for v in rng.integers(30, 230, size=3))
        draw.rectangle([x, horizon + 0.05 * c, x + 0.18 * c, horizon + 0.13 * c], fill=color)
    if trees:
        for _ in range(int(rng.integers(2, 5))):
            x, r = float(rng.uniform(0, c)), float(rng.uniform(0.08, 0.14)) * c
            draw.ellipse([x - r, horizon - 1.6 * r, x + r, horizon + 0.4 * r], fill=TREE)
