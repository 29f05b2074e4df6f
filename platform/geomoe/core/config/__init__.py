"""Typed specs, validated at the edge: YAML -> (``--set dotted.key=value`` overrides) -> pydantic models with
unknown keys forbidden. Every failure names the file, the dotted key and the reason (``SpecError``); nothing
downstream takes a raw dict.

Modules: parsing (the machinery), data, engines, retrieval (evaluation and re-ranking), family (what every model
family's sections share, and ``JobSection``, the base of a family's own top-level sections), job, sweep, serve. A
family's own sections (``model``, ``train`` and any of its own) live in its folder (``families/<name>/spec.py``);
the job picks them by ``model.name`` through geomoe.core.registry: nothing here imports them.
"""

from geomoe.core.config.data import DEFAULT_PLATFORM_RULES, DataSpec, PlatformRule, PreprocessSpec, SynthSpec
from geomoe.core.config.engines import CaptionSpec, EngineSpec, RefineSpec
from geomoe.core.config.family import FamilyModelSpec, JobSection, TrainSpec, as_section
from geomoe.core.config.job import (
    DATASET_KINDS,
    TRAINING_SECTIONS,
    JobSpec,
    ResourcesSpec,
    StorageSpec,
    load_job,
)
from geomoe.core.config.parsing import Strict, apply_overrides, expand_env, load_yaml, parse_spec
from geomoe.core.config.retrieval import EvalSpec, RerankSpec
from geomoe.core.config.serve import ServeCaptionerSpec, ServeSpec
from geomoe.core.config.sweep import AshaSpec, PaperRow, PaperSpec, SearchSpec, SweepSpec, SweepVariant

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
    "JobSection",
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
    "TrainSpec",
    "apply_overrides",
    "as_section",
    "expand_env",
    "load_job",
    "load_yaml",
    "parse_spec",
]
