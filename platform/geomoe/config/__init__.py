"""Typed specs, validated at the edge: YAML -> (``--set dotted.key=value`` overrides) -> pydantic models with
unknown keys forbidden. Every failure names the file, the dotted key and the reason (``SpecError``); nothing
downstream takes a raw dict.

Modules: base (the machinery), data, engines, retrieval (evaluation, index, Track 4), family (what every model
family's sections share), job, sweep, serve, and one module per built-in family's own ``model`` and ``train``
sections (pe_moe, smgeo), which the job picks by ``model.name`` through geomoe.registry: nothing here imports them.
"""

from geomoe.config.base import Strict, apply_overrides, expand_env, load_yaml, parse_spec
from geomoe.config.data import DEFAULT_PLATFORM_RULES, DataSpec, PlatformRule, PreprocessSpec, SynthSpec
from geomoe.config.engines import CaptionSpec, EngineSpec, RefineSpec
from geomoe.config.family import FamilyModelSpec, TrainSpec, as_section
from geomoe.config.job import (
    DATASET_KINDS,
    TRAINING_SECTIONS,
    JobSpec,
    ResourcesSpec,
    StorageSpec,
    load_job,
)
from geomoe.config.retrieval import EvalSpec, IndexSpec, RerankSpec, Track4Spec
from geomoe.config.serve import ServeCaptionerSpec, ServeSpec
from geomoe.config.sweep import AshaSpec, PaperRow, PaperSpec, SearchSpec, SweepSpec, SweepVariant

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_PLATFORM_RULES",
    "TRAINING_SECTIONS",
    "AshaSpec",
    "CaptionSpec",
    "DataSpec",
    "EngineSpec",
    "EvalSpec",
    "FamilyModelSpec",
    "IndexSpec",
    "JobSpec",
    "PaperRow",
    "PaperSpec",
    "PlatformRule",
    "PreprocessSpec",
    "RefineSpec",
    "RerankSpec",
    "ResourcesSpec",
    "SearchSpec",
    "ServeCaptionerSpec",
    "ServeSpec",
    "StorageSpec",
    "Strict",
    "SweepSpec",
    "SweepVariant",
    "SynthSpec",
    "Track4Spec",
    "TrainSpec",
    "apply_overrides",
    "as_section",
    "expand_env",
    "load_job",
    "load_yaml",
    "parse_spec",
]
