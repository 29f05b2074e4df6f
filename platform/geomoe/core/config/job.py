"""The job spec: one complete experiment (data, preprocessing, a model family's model and training sections,
evaluation, resources, storage). The ``model`` and ``train`` sections are validated by the family that
``model.name`` picks (geomoe.core.registry), so a new family adds its own sections without touching this module.
Relative paths in a spec are relative to the working directory the job is launched from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from geomoe.core import registry, storage
from geomoe.core.config.data import DataSpec, PreprocessSpec
from geomoe.core.config.engines import CaptionSpec, RefineSpec
from geomoe.core.config.family import FamilyModelSpec, JobSection, SectionT, TrainSpec, as_section
from geomoe.core.config.parsing import Strict, apply_overrides, load_yaml, parse_spec
from geomoe.core.config.retrieval import EvalSpec


class ResourcesSpec(Strict):
    address: str | None = Field(None, description="Ray address; None starts a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local cluster")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = Field(
        False,
        description="one GPU per training worker, per image-embedding actor (mining, evaluation, index) and for "
        "the text embedding and scoring of evaluation and mining (a GPU task; the driver needs none)",
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    memory_per_worker: float | None = Field(
        None,
        gt=0,
        description="GiB each training worker needs: a Kubernetes pod asks for it (geomoe k8s; default: "
        "the node's memory in proportion to the CPUs the pod takes)",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each training worker needs (node labels, GPU types)"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how training workers are placed; STRICT_SPREAD puts each on its own node"
    )
    data_concurrency: int = Field(2, ge=1, description="parallel Ray Data tasks for CPU stages")
    concurrent_models: bool = Field(
        False,
        description="train the model and its baselines at once, each in its own Ray task with its own trainer "
        "(one model's workers use what another's evaluation and start-up leave idle)",
    )
    embed_in_driver_max: int = Field(
        0,
        ge=0,
        description="embed image sets of at most this many images in the driver process, without a Ray Data "
        "actor pool (a pool's start-up costs more than a small tiny-model gallery; the driver may have no GPU)",
    )

    @property
    def embed_gpus(self) -> float:
        """GPUs each image-embedding actor holds."""
        return 1.0 if self.use_gpu else 0.0


class StorageSpec(Strict):
    """Which local paths every node of a cluster sees. URIs (s3://, gs://, ...) are shared by nature; a local
    path is shared only when it lies on a mount every node has (NFS, EFS), and a spec must say so: a multi-node
    run with an undeclared local location stops before any work (``geomoe.on_ray.ray_env.check_shared_storage``)."""

    shared: bool = Field(False, description="every local path in this spec is on a mount all nodes share")
    shared_mounts: list[str] = Field(default_factory=list, description="local path prefixes that all nodes share")

    def is_shared(self, location: str) -> bool:
        if not storage.is_local(location) or self.shared:
            return True
        path = Path(storage.absolute(location))
        return any(path.is_relative_to(Path(storage.absolute(mount))) for mount in self.shared_mounts)


def _credential_problem(value: Any, key: str = "") -> str | None:
    """The dotted key of a URI that carries credentials (user:secret@), if any: they belong in the environment."""
    if isinstance(value, str):
        return key if storage.redact(value) != value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for name, item in items:
        found = _credential_problem(item, f"{key}.{name}" if key else str(name))
        if found:
            return found
    return None


# The spec sections a trained stage depends on (see JobSpec.fingerprint).
TRAINING_SECTIONS = ("seed", "data", "preprocess", "refine", "families", "model", "train")
# What each data.format prepares into (a family trains on one kind).
DATASET_KINDS = {"geotext": "retrieval", "cvogl": "localization"}


# A location that starts with RUN_FOLDER lies in the job's run folder, <output_root>/<name>, so that one key
# (output_root) moves every output of a job. The output locations below default to a folder there.
RUN_FOLDER = "{run}"
DEFAULT_OUTPUTS = {
    ("preprocess", "output_dir"): "prepared",
    ("refine", "output_dir"): "refined",
    ("caption", "output"): "gallery_captions.parquet",
}  # and a family's own sections' output_dir (config.family.JobSection): <run>/<section>


def _in_run_folder(raw: Any, run: str) -> Any:
    """Every string that starts with ``{run}`` with the run folder put in its place."""
    if isinstance(raw, str):
        if raw == RUN_FOLDER or raw.startswith(RUN_FOLDER + "/"):
            return storage.join(run, raw[len(RUN_FOLDER) + 1 :]) if raw != RUN_FOLDER else run
        return raw
    if isinstance(raw, dict):
        return {k: _in_run_folder(v, run) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_in_run_folder(v, run) for v in raw]
    return raw


def _check_section_names(spec: type[BaseModel], family: str, sections: dict[str, type[JobSection]]) -> None:
    """A family's own section may not take a name JobSpec has (a field, or a method: it would never be read)."""
    clash = [name for name in sections if name in spec.model_fields or hasattr(spec, name)]
    if clash:
        raise TypeError(f"family {family}: its section {clash[0]!r} takes a name JobSpec has already")


def _unknown_key(spec: type[BaseModel], raw: dict[str, Any], key: str, family: str) -> InitErrorDetails:
    """The error of a top-level key that is not the job's: another family's section, or a misspelling."""
    owners = registry.section_owners().get(key)
    if owners:
        reason = f"a section of {' and '.join(owners)} jobs, not of {family} jobs"
    else:
        close = difflib.get_close_matches(key, [k for k in spec.model_fields if k not in raw], n=1)
        reason = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
    return InitErrorDetails(type=PydanticCustomError("unknown_key", reason), loc=(key,), input=raw[key])


def _run_of(raw: dict[str, Any]) -> str:
    """The run folder of a raw job spec (``""`` while its name or output root is malformed: pydantic reports it)."""
    output_root, name = raw.get("output_root", "runs"), raw.get("name")
    return storage.join(output_root, name) if isinstance(output_root, str) and isinstance(name, str) else ""


def _default_output_dir(raw: dict[str, Any], key: str, kind: type[BaseModel]) -> None:
    """A family section's ``output_dir`` left out: ``<run folder>/<key>``, as DEFAULT_OUTPUTS for the common ones."""
    value = raw.get(key)
    if isinstance(value, dict) and "output_dir" in kind.model_fields and value.get("output_dir") is None:
        raw[key] = {**value, "output_dir": storage.join(_run_of(raw), key)}


def _family_section(raw: dict[str, Any], key: str, kind: type[BaseModel], errors: list[InitErrorDetails]) -> None:
    """Validate ``raw[key]`` as the family's ``kind`` in place; collect its errors with their full keys."""
    value = raw.get(key, {})
    if isinstance(value, BaseModel):
        if isinstance(value, kind):
            return
        value = value.model_dump(mode="json")
    try:
        raw[key] = kind.model_validate(value)
    except ValidationError as err:
        errors += [InitErrorDetails(**{**e, "loc": (key, *e["loc"])}) for e in err.errors()]  # type: ignore[typeddict-unknown-key]


class JobSpec(Strict):
    # Unknown keys are still errors: the "before" validator accepts only the sections the job's family declares
    # (Family.sections, validated as their classes there) and refuses any other; pydantic keeps those as extras
    # (``section``), dumped at the top level like the fields.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    seeds: list[int] = Field(
        default_factory=list,
        description="train (and evaluate) the model and its baselines once per seed, each under <run>/seed-<s>; "
        "the report gives mean ± std over seeds and the pooled interval; later stages use the first seed's model",
    )
    output_root: str = "runs"
    stages: list[str] = ["synth", "prepare", "train"]
    families: list[str] = Field(
        default_factory=list, description="modules (dotted paths or .py files) that register more model families"
    )
    data: DataSpec
    preprocess: PreprocessSpec
    model: SerializeAsAny[FamilyModelSpec]
    train: SerializeAsAny[TrainSpec]
    eval: EvalSpec = Field(default_factory=lambda: EvalSpec())
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    refine: RefineSpec | None = None
    caption: CaptionSpec | None = None
    baselines: dict[str, list[str]] = Field(
        default_factory=dict,
        description="name -> dotted overrides: extra models trained and evaluated on the same data",
    )
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec())

    @model_validator(mode="before")
    @classmethod
    def _family_sections(cls, raw: Any) -> Any:
        """The ``model`` and ``train`` sections as the family's own spec classes (errors keep their keys)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("families") or [], list):
            return raw  # pydantic reports the malformed ``families`` (its first field error)
        raw = dict(raw)
        model = raw.get("model") or {}
        name = model.get("name") if isinstance(model, dict) else getattr(model, "name", None)
        try:
            registry.load_plugins(raw.get("families") or [])
            family = registry.family(name if isinstance(name, str) or name is None else str(name))
        except registry.UnknownFamilyError as err:
            loc = ("families",) if str(err).startswith("families:") else ("model", "name")
            error = PydanticCustomError("unknown_family", str(err).removeprefix("families: "))
            raise ValidationError.from_exception_data(
                cls.__name__, [InitErrorDetails(type=error, loc=loc, input=name)]
            ) from None
        if isinstance(model, dict) and name is None:
            raw["model"] = {**model, "name": family.name}
        errors: list[InitErrorDetails] = []
        _family_section(raw, "model", family.model_spec, errors)
        _family_section(raw, "train", family.train_spec, errors)
        _check_section_names(cls, family.name, family.sections)
        for key in [k for k in raw if k not in cls.model_fields]:  # a family's own sections; any other is unknown
            if key in family.sections and raw[key] is not None:
                _default_output_dir(raw, key, family.sections[key])
                _family_section(raw, key, family.sections[key], errors)
            elif raw[key] is None and (key in family.sections or key in registry.section_owners()):
                del raw[key]  # ``index: null``: what every spec dump carried while index and track4 were fields
            else:
                errors.append(_unknown_key(cls, raw, key, family.name))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return raw

    @model_validator(mode="before")
    @classmethod
    def _outputs_in_run_folder(cls, raw: Any) -> Any:
        """Output locations the spec leaves out go to the run folder; ``{run}/...`` is expanded there. (Defined
        after ``_family_sections``, so that it runs first: pydantic runs "before" validators last-defined first,
        and ``model``/``train`` must still be plain data here.)"""
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            return raw  # pydantic reports the missing or malformed name
        raw = dict(raw)
        raw.setdefault("preprocess", {})
        for (section, key), folder in DEFAULT_OUTPUTS.items():
            value = raw.get(section)
            if isinstance(value, dict) and value.get(key) is None:
                raw[section] = {**value, key: f"{RUN_FOLDER}/{folder}"}
        return _in_run_folder(raw, _run_of(raw))

    @model_validator(mode="after")
    def _no_credentials_in_uris(self) -> JobSpec:
        key = _credential_problem(self.model_dump(mode="json"))
        if key:
            raise ValueError(
                f"{key}: a URI carries credentials (user:secret@); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or GOOGLE_APPLICATION_CREDENTIALS) in the environment instead"
            )
        return self

    @model_validator(mode="after")
    def _stages_can_run(self) -> JobSpec:
        """Every stage's preconditions (geomoe.core.stages: each stage's ``check``), checked before any stage runs."""
        from geomoe.core.stages import stages_of

        family, known = registry.family(self.model.name), stages_of(self)
        unknown = [s for s in self.stages if s not in known]
        if unknown:
            raise ValueError(f"stages: {unknown[0]!r} is not a stage of {family.name} jobs (stages: {list(known)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} repeats a seed")
        for stage in known.values():  # in a fixed order (common stages, then the family's), as listed_stages
            if stage.name in self.stages:
                stage.check(self)
        family.check_job(self)
        self._check_outputs_apart()
        return self

    def dataset_kind(self) -> str:
        """What the data section prepares: "retrieval" or "localization" (DATASET_KINDS)."""
        return DATASET_KINDS[self.data.format]

    def _check_outputs_apart(self) -> None:
        """No output lies in (or is) another, and none holds the run folder: one stage's publish would replace
        another stage's output (the run folder may hold them all)."""
        found = [(key, storage.absolute(location).rstrip("/")) for key, location, _ in self.outputs()]
        for i, (key, location) in enumerate(found):
            for other_key, other in found[i + 1 :]:
                holds = location == other or storage.is_inside(location, other)
                if holds or (i > 0 and storage.is_inside(other, location)):
                    outer_key, inner_key = (other_key, key) if holds else (key, other_key)
                    raise ValueError(
                        f"{inner_key}: {location if holds else other} lies in {outer_key}; give each output a "
                        "folder of its own"
                    )

    def model_as(self, kind: type[SectionT]) -> SectionT:
        """The model section as the family's class ``kind`` (an error naming the job otherwise)."""
        return as_section(self.model, kind, f"job {self.name}", self.model.name)

    def train_as(self, kind: type[SectionT]) -> SectionT:
        """The train section as the family's class ``kind``."""
        return as_section(self.train, kind, f"job {self.name}", self.model.name)

    def family_sections(self) -> dict[str, JobSection]:
        """The top-level sections of the job's family's own that the job has (Family.sections), by name."""
        return {k: v for k, v in (self.model_extra or {}).items() if isinstance(v, JobSection)}

    def section(self, name: str, kind: type[SectionT]) -> SectionT | None:
        """The family's own section ``name`` as its class ``kind``, or None when the job has none."""
        found = (self.model_extra or {}).get(name)
        return None if found is None else as_section(found, kind, f"job {self.name}", self.model.name, key=name)

    def locations(self) -> dict[str, str]:
        """Every data and output location of the job, by dotted key (what must be shared on a cluster)."""
        found = {"output_root": self.output_root, "data.root": self.data.root}
        if "synth" in self.stages and self.data.synthesize and self.data.synthesize.output_dir:
            found["data.synthesize.output_dir"] = self.data.synthesize.output_dir
        found["preprocess.output_dir"] = self.preprocess.output_dir
        if self.refine:
            found["refine.output_dir"] = self.refine.output_dir
        if self.caption:
            found["caption.output"] = self.caption.output
        for name, section in self.family_sections().items():
            found |= {f"{name}.{k}": getattr(section, k) for k in section.shared_fields if getattr(section, k)}
        for i, rerank in enumerate(self.eval.rerank):
            found[f"eval.rerank.{i}.captions"] = rerank.captions
        from geomoe.core.stages import listed_stages

        for stage in listed_stages(self):  # what the stages write besides (a family's own, a baseline's table)
            for out in stage.outputs(self):
                found.setdefault(out.key, out.location)
        return found

    def run_folder(self) -> str:
        """``<output_root>/<name>``: the run's spec, results, checkpoints, logs and (by default) every output."""
        return storage.join(self.output_root, self.name)

    def outputs(self) -> list[tuple[str, str, str]]:
        """(spec key, location, stage) of every folder this job's stages create or replace (the caption store is a
        file): what the ownership rule checks before any stage runs."""
        from geomoe.core.stages import listed_stages

        found = [("output_root", self.run_folder(), "run")]
        for stage in listed_stages(self):
            found += [(out.key, out.location, out.owner or stage.name) for out in stage.outputs(self)]
        return found

    def baseline(self, name: str) -> JobSpec:
        """This spec with a baseline's overrides applied, on the same data.

        A baseline that changes ``preprocess`` (say, ``preprocess.refine=none``) is prepared into its own folder,
        ``<output_dir>-<name>``, unless its overrides name one.
        """
        overrides = self.baselines[name]
        raw = apply_overrides(self.model_dump(mode="json"), overrides, f"baselines.{name}")
        raw["baselines"] = {}
        own_dir = any(o.startswith("preprocess.output_dir=") for o in overrides)
        if raw["preprocess"] != self.preprocess.model_dump(mode="json") and not own_dir:
            raw["preprocess"]["output_dir"] = f"{self.preprocess.output_dir.rstrip('/')}-{name}"
        return parse_spec(JobSpec, raw, f"baselines.{name}")

    def with_absolute_paths(self, base: str | Path | None = None) -> JobSpec:
        """Local paths made absolute against ``base`` (default: the working directory), once, at the edge.

        Ray workers do not share the driver's working directory. Hub ids and pretrained tags stay as they are:
        a model source counts as local when it exists or when ``model.tiny`` will build it there.
        """
        root = Path(base or Path.cwd()).resolve()
        absolute = lambda p: storage.absolute(p, root) if p else p  # noqa: E731  (URIs stay as they are)
        raw = self.model_dump(mode="json")
        raw["output_root"] = absolute(raw["output_root"])
        raw["data"]["root"] = absolute(raw["data"]["root"])
        if raw["data"].get("synthesize"):
            raw["data"]["synthesize"]["output_dir"] = absolute(raw["data"]["synthesize"]["output_dir"])
        raw["preprocess"]["output_dir"] = absolute(raw["preprocess"]["output_dir"])
        for name, own in self.family_sections().items():
            raw[name] |= {key: absolute(raw[name][key]) for key in own.path_fields}
        if raw.get("refine"):
            raw["refine"]["output_dir"] = absolute(raw["refine"]["output_dir"])
            if raw["refine"]["prompts"]:
                raw["refine"]["prompts"] = absolute(raw["refine"]["prompts"])
        for section in ("refine", "caption"):
            if raw.get(section) and self._local_engine_model(raw[section]["engine"], root):
                raw[section]["engine"]["model"] = absolute(raw[section]["engine"]["model"])
        if raw.get("caption"):
            raw["caption"]["output"] = absolute(raw["caption"]["output"])
            if raw["caption"]["prompts"]:
                raw["caption"]["prompts"] = absolute(raw["caption"]["prompts"])
        for rerank in raw["eval"]["rerank"]:
            rerank["captions"] = absolute(rerank["captions"])
        raw["families"] = [absolute(m) if m.endswith(".py") else m for m in raw["families"]]
        is_local = lambda value: storage.exists(storage.absolute(value, root))  # noqa: E731
        raw["model"] = self.model.with_absolute_paths(absolute, is_local)
        return JobSpec.model_validate(raw)

    @staticmethod
    def _local_engine_model(engine: dict[str, Any], root: Path) -> bool:
        """A served (http) model is a name; otherwise a model is local when it exists or ``tiny`` builds it."""
        return engine["kind"] != "http" and (engine["tiny"] or storage.exists(storage.absolute(engine["model"], root)))

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the resolved spec, or of only the named top-level ``sections``.

        Results are keyed on what produced them: a trained stage on TRAINING_SECTIONS, so changing, say,
        eval.ks or resources re-evaluates without retraining.
        """
        dump = self._keyed_dump()
        blob = json.dumps({k: dump[k] for k in sections} if sections else dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stage_fingerprint(self, stage: int) -> str:
        """What a trained stage depends on: TRAINING_SECTIONS, less the train fields the stage ignores (so tuning
        PE-MoE's stage 2 reuses a finished stage 1)."""
        dump = self._keyed_dump()
        blob = {k: dump[k] for k in TRAINING_SECTIONS}
        ignored = self.train.fields_ignored_by_stage(stage)
        blob["train"] = {k: v for k, v in blob["train"].items() if k not in ignored}
        if self.train.batch_per == "worker":  # the step's batch is batch_size x workers: the workers count too
            blob["train"]["workers"] = self.resources.num_workers
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def _keyed_dump(self) -> dict[str, Any]:
        """The spec as results are keyed on it. Fields added later are left out at their default
        (``train.batch_per``, synthgeo's newer planted knobs): a result from before they existed (a trained stage,
        a finished sweep trial) keeps its key."""
        dump = self.model_dump(mode="json")
        if dump["train"].get("batch_per") == "global":
            del dump["train"]["batch_per"]
        if self.data.synthesize is not None:
            dump["data"]["synthesize"] = self.data.synthesize.keyed_dump()
        return dump


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    return parse_spec(JobSpec, load_yaml(path), str(path), overrides)
