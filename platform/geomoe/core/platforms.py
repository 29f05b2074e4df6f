"""The three camera platforms of cross-view geo-localization (its own module: specs and readers both need it)."""

from __future__ import annotations

from enum import StrEnum


class Platform(StrEnum):
    SATELLITE = "satellite"
    DRONE = "drone"
    GROUND = "ground"


PLATFORMS: tuple[str, ...] = tuple(p.value for p in Platform)
