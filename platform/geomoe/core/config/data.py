"""Dataset, synthetic-benchmark and preprocessing sections of a job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from geomoe.core.config.parsing import Strict
from geomoe.core.platforms import Platform


class PlatformRule(Strict):
    """Files whose name matches ``pattern`` (a regex, full match) belong to ``platform``."""

    pattern: str
    platform: Platform


# GeoText-1652 has no platform field (docs/datasets.md). University-1652 names drone frames image-NN,
# the satellite tile after the building, and street views anything else; we keep the last case explicit
# so an unexpected name is reported instead of being filed under "ground" by default.
DEFAULT_PLATFORM_RULES = [
    PlatformRule(pattern=r"image-\d+\.(jpe?g|png)", platform=Platform.DRONE),
    PlatformRule(pattern=r"\d{4}\.(jpe?g|png|tif)", platform=Platform.SATELLITE),
    PlatformRule(pattern=r"(street|ground|google)[-_].+\.(jpe?g|png)", platform=Platform.GROUND),
]


class PlantedSpec(Strict):
    """Planted effects (``geomoe calibrate``): each makes the premise of one mechanism a paper ablates or claims true by
    construction, to the degree its strength in [0, 1] says; strength 0 is that mechanism's null world. The
    defaults are synthgeo as it always was (v3), draw for draw."""

    caption_gap: float = Field(
        1.0,
        ge=0,
        le=1,
        description="textual domain alignment: the share of training captions written in the verbose generic style "
        "(an opening, random attributes, filler) that test queries lack and refinement removes; the rest are written "
        "like test queries. 0: training and test texts agree, nothing for alignment to fix",
    )
    platform_conflict: float = Field(
        0.0,
        ge=0,
        le=1,
        description="platform experts: the share of buildings whose drone views paint the roof in another colour "
        "than the satellite shows (a fixed permutation) and whose ground views paint the facade in another material "
        "than the drone shows, while every caption names the true ones: a word means different pixels per platform, "
        "which one shared head must untangle and a head per platform need not. 0: the platforms agree",
    )
    query_platform_cue: float = Field(
        1.0,
        ge=0,
        le=1,
        description="dynamic gating: the share of test queries worded for their image's platform (a platform phrase "
        "and what that platform shows), from which a gate can tell the platform; the rest are neutral (no platform "
        "phrase, attributes several platforms show, the same for every platform). 0: no query tells its platform",
    )
    attribute_twins: float = Field(
        0.0,
        ge=0,
        le=1,
        description="hard-negative mining (stage 2): the share of buildings (the second of each pair in a split) "
        "built as the twin of the building before: the same shape, layout, surroundings, floors and ground details, "
        "another roof colour and facade, so the satellite's and the ground's views and captions differ from the "
        "twin's in one attribute, the drone's in both. Random in-batch negatives rarely hold a twin; mined ones may "
        "(semi-hard mining keeps only those scoring below the query's own image). 0: no twins (synthgeo's chance "
        "look-alikes stay)",
    )
    cell_kinds: float = Field(
        0.0,
        ge=0,
        le=1,
        description="SMGeo's grid-level experts (CVOGL layout): the share of a satellite tile's 3 x 3 cells drawn "
        "as one of three other kinds, each with its own colour transform of everything in the cell (inverted, "
        "channels rotated, both), while the drone query shows true colours: matching a query to a cell takes a "
        "transform per kind, which a cell's own experts can learn and one shared FFN must share out. The kind shows "
        "in the cell's ground colour. 0: every cell plain (homogeneous)",
    )


# Planted knobs added after results were keyed on synthgeo specs, with their defaults: SynthSpec.keyed_dump leaves
# them out there, so those results keep their keys
PLANTED_ADDED_LATER = {"attribute_twins": 0.0, "cell_kinds": 0.0}


class SynthSpec(Strict):
    """Size of a generated synthgeo benchmark (see ``geomoe.core.data.synthgeo``)."""

    output_dir: str | None = Field(
        None,
        description="the folder synth writes its three layouts into (geotext/, track4/, cvogl/): a folder of its "
        "own, which data.root must lie inside; a job's synth stage requires it",
    )
    seed: int = 0
    train_buildings: int = Field(24, ge=1)
    test_buildings: int = Field(12, ge=1)
    drone_views: int = Field(4, ge=1)
    ground_views: int = Field(2, ge=0)
    train_captions: int = Field(2, ge=1, description="captions per training image (GeoText has 3)")
    test_captions: int = Field(2, ge=1)
    image_size: int = Field(64, ge=16)
    localization_train: int = Field(32, ge=0)
    localization_val: int = Field(8, ge=0)
    localization_test: int = Field(8, ge=0)
    tile_size: int = Field(128, ge=32, description="satellite tile side for the localization layout")
    query_size: int = Field(64, ge=16, description="drone query side for the localization layout")
    planted: PlantedSpec = Field(default_factory=PlantedSpec, description="planted effects (calibration worlds)")

    def keyed_dump(self) -> dict[str, Any]:
        """The spec as what was generated from it is keyed on it (synthgeo's manifest, a job's fingerprints): a
        knob added after such keys were written is left out at its default, so they keep matching."""
        dump = self.model_dump(mode="json")
        for knob, default in PLANTED_ADDED_LATER.items():
            if dump["planted"].get(knob) == default:
                del dump["planted"][knob]
        return dump


class DataSpec(Strict):
    format: Literal["geotext", "cvogl"] = "geotext"  # Track 4 is a test-time layout: see the track4 section
    root: str
    train_file: str = "train.json"
    test_file: str = "test_951_version.json"
    platform_rules: list[PlatformRule] = Field(default_factory=lambda: list(DEFAULT_PLATFORM_RULES))
    cvogl_setting: Literal["DroneAerial", "SVI"] = "DroneAerial"
    synthesize: SynthSpec | None = Field(
        None, description="generate a synthgeo dataset (into its output_dir, which holds root) first"
    )

    @field_validator("platform_rules")
    @classmethod
    def _rules_compile(cls, rules: list[PlatformRule]) -> list[PlatformRule]:
        import re

        for rule in rules:
            try:
                re.compile(rule.pattern)
            except re.error as err:
                raise ValueError(f"bad regex {rule.pattern!r}: {err}") from err
        return rules


class PreprocessSpec(Strict):
    output_dir: str = Field(description="the prepared table (default: <output_root>/<name>/prepared)")
    max_words_train: int = Field(30, ge=1)
    max_words_test: int = Field(50, ge=1)
    statement_words: int = Field(12, ge=3)
    satellite_copies: int = Field(2, ge=0, description="augmented copies per satellite training pair")
    augment_jitter: float = Field(0.2, ge=0.0, lt=1.0)
    directional_phrases: list[str] | None = Field(None, description="None = the built-in list")
    validate_images: bool = True
    on_bad_record: Literal["fail", "skip"] = "fail"
    refine: Literal["none", "rules"] = Field(
        "none", description="textual domain alignment of training captions: rules = platform framing, no LLM"
    )
    refine_rules: str | None = Field(None, description="rules file for refine=rules; None = the built-in v1")
    rows_per_file: int = Field(50_000, ge=1)
    force: bool = False
