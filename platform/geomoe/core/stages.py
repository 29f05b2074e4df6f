"""A job's stages as objects (core, no Ray): what each checks when the spec is validated, the folders it writes,
how it runs and what the CLI prints of its result.

The stages every job may have are ``COMMON``; a family declares its own (``Family.stages``, e.g. PE-MoE's index and
Track 4 submission). Spec validation, the ownership check, the job runner, the progress bars and the CLI iterate
over these objects; none of them branches on a stage's name. A stage's ``runner`` is a ``"module:function"`` in
the Ray layer, imported only when the stage runs (as entry points are), so this module and spec validation stay
free of Ray; a family loaded from a file may give the function itself.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from geomoe.core.summaries import caption_summary, manifest_summary, refine_summary

if TYPE_CHECKING:
    from geomoe.core.config import JobSpec
    from geomoe.core.job_results import JobResults


class Output(NamedTuple):
    """A folder (or file) a stage creates or replaces: its spec key, where it is, and the stage its owner record
    names (None: the stage itself; a baseline's own prepared table is written by prepare inside train)."""

    key: str
    location: str
    owner: str | None = None


@dataclass(frozen=True)
class StageContext:
    """What a running stage gets besides its spec: the earlier stages' results, the run folder, its progress bar."""

    results: JobResults
    run_dir: str
    bar: Any  # geomoe.core.progress.StageBar


def _no_check(spec: JobSpec) -> None:
    return None


def _no_outputs(spec: JobSpec) -> list[Output]:
    return []


@dataclass(frozen=True)
class Stage:
    """One stage: ``check`` raises ValueError("key: reason") when the spec cannot run it; ``outputs`` are what
    the ownership rule checks before any stage runs (``file_output``: the location is one file, not a folder);
    ``needs_ray``: the job joins or starts its Ray cluster first; ``runner(spec, context)`` (a function, or where
    it is as ``"module:function"``) returns the stage's JSON result; ``summary(spec, result)`` is what the CLI
    prints (None: nothing); ``progress(spec)`` is what its bar counts (keyword arguments of ``Progress.stage``)."""

    name: str
    runner: str | Callable[[JobSpec, StageContext], Any]
    needs_ray: bool = True  # the job joins (or starts) its Ray cluster before the stage runs
    check: Callable[[JobSpec], None] = _no_check
    outputs: Callable[[JobSpec], list[Output]] = _no_outputs
    file_output: bool = False
    summary: Callable[[JobSpec, Any], str | None] = field(default=lambda spec, result: None)
    progress: Callable[[JobSpec], dict[str, Any]] = field(default=lambda spec: {})

    def run(self, spec: JobSpec, context: StageContext) -> Any:
        if callable(self.runner):
            return self.runner(spec, context)
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)(spec, context)


def _check_synth(spec: JobSpec) -> None:
    """synth writes into a folder of its own, and the job reads its data from inside that folder."""
    from geomoe.core import storage

    synth = spec.data.synthesize
    if synth is None:
        raise ValueError("stage 'synth' needs data.synthesize")
    if synth.output_dir is None:
        raise ValueError(
            "data.synthesize.output_dir: stage 'synth' needs the folder it writes into (a folder of its own; "
            "data.root must lie inside it, e.g. output_dir: data/synthgeo with root: data/synthgeo/geotext)"
        )
    if not storage.is_inside(spec.data.root, synth.output_dir):
        raise ValueError(
            f"data.root: {spec.data.root} is not inside data.synthesize.output_dir ({synth.output_dir}), the "
            "folder synth writes; set data.synthesize.output_dir to the folder synth may own"
        )


def _synth_outputs(spec: JobSpec) -> list[Output]:
    synth = spec.data.synthesize
    return [] if synth is None or synth.output_dir is None else [Output("data.synthesize.output_dir", synth.output_dir)]


def _check_section(section: str, needs: str) -> Callable[[JobSpec], None]:
    def check(spec: JobSpec) -> None:
        if getattr(spec, section) is None:
            raise ValueError(f"stage {section!r} needs a {section} section ({needs})")

    return check


def section_output(section: str, field: str) -> Callable[[JobSpec], list[Output]]:
    """The outputs of a stage that writes where its spec section's ``field`` says (none without the section)."""

    def outputs(spec: JobSpec) -> list[Output]:
        found = getattr(spec, section, None)  # a family's own section (an extra) is absent when not given
        return [] if found is None else [Output(f"{section}.{field}", getattr(found, field))]

    return outputs


def _prepare_outputs(spec: JobSpec) -> list[Output]:
    return [Output("preprocess.output_dir", spec.preprocess.output_dir)]


def _train_outputs(spec: JobSpec) -> list[Output]:
    """A baseline that prepares its own table writes it in the train stage."""
    found = []
    for name in spec.baselines:
        folder = spec.baseline(name).preprocess.output_dir
        if folder != spec.preprocess.output_dir:
            found.append(Output(f"baselines.{name}: preprocess.output_dir", folder, owner="prepare"))
    return found


def _check_train(spec: JobSpec) -> None:
    from geomoe.core import registry

    family, kind = registry.family(spec.model.name), spec.dataset_kind()
    if kind != family.dataset_kind:
        raise ValueError(
            f"data.format: {spec.data.format} prepares {kind} data, and {family.name} trains on "
            f"{family.dataset_kind} data"
        )


def _train_progress(spec: JobSpec) -> dict[str, Any]:
    """The train stage's bar counts epochs over every model (and seed)."""
    from geomoe.core import registry

    models = ["model", *spec.baselines]
    epochs = registry.family(spec.model.name).training_epochs(spec.train)
    seeds = f" x {len(spec.seeds)} seeds" if spec.seeds else ""
    detail = f"{', '.join(models)} ({epochs} epochs each{seeds})"
    return {"total": epochs * len(models) * max(1, len(spec.seeds)), "unit": "epoch", "detail": detail}


def _train_summary(spec: JobSpec, result: Any) -> str:
    from geomoe.core.summaries import train_report

    return train_report(spec, result)


COMMON: tuple[Stage, ...] = (
    Stage(
        "synth",
        "geomoe.on_ray.jobs:run_synth",
        needs_ray=False,
        check=_check_synth,
        outputs=_synth_outputs,
        summary=lambda spec, result: f"synthgeo: {json.dumps(result)}",
    ),
    Stage(
        "prepare",
        "geomoe.on_ray.jobs:run_prepare",
        needs_ray=False,  # prepare starts Ray itself, and only when its inputs changed
        outputs=_prepare_outputs,
        summary=lambda spec, result: manifest_summary(result),
    ),
    Stage(
        "refine",
        "geomoe.on_ray.jobs:run_refine",
        check=_check_section("refine", "engine, output_dir"),
        outputs=section_output("refine", "output_dir"),
        summary=lambda spec, result: refine_summary(result),
    ),
    Stage(
        "caption",
        "geomoe.on_ray.jobs:run_caption",
        check=_check_section("caption", "engine, output"),
        outputs=section_output("caption", "output"),
        file_output=True,
        summary=lambda spec, result: caption_summary(result),
    ),
    Stage(
        "train",
        "geomoe.on_ray.jobs:run_train",
        check=_check_train,
        outputs=_train_outputs,
        summary=_train_summary,
        progress=_train_progress,
    ),
)


def stages_of(spec: JobSpec) -> dict[str, Stage]:
    """Every stage a job of this spec's family may list, by name: the common ones, then the family's."""
    from geomoe.core import registry

    family = registry.family(spec.model.name)
    return {stage.name: stage for stage in (*COMMON, *family.stages)}


def job_stages(spec: JobSpec) -> list[Stage]:
    """The spec's stages in the order they run (the spec's)."""
    known = stages_of(spec)
    return [known[name] for name in spec.stages]


def listed_stages(spec: JobSpec) -> list[Stage]:
    """The spec's stages once each, in the fixed order of ``stages_of`` (the common ones, then the family's):
    the order their checks run, their outputs are listed and the CLI prints their summaries."""
    return [stage for name, stage in stages_of(spec).items() if name in spec.stages]


def printed_summaries(spec: JobSpec, outputs: dict[str, Any]) -> list[str]:
    """What a finished job prints, stage by stage: the CLI after a run, and ``geomoe report RUN`` from the run's
    files (the README's demo tables are this, tested equal to the demo run's results)."""
    printed = []
    for stage in listed_stages(spec):
        summary = stage.summary(spec, outputs[stage.name]) if stage.name in outputs else None
        if summary is not None:
            printed.append(summary)
    return printed
