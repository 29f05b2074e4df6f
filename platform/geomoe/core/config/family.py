"""What every model family's spec sections share: the ``model`` section's base (its ``name`` picks the family)
and the training settings the one training engine reads (geomoe.on_ray.train.loop), which a family subclasses; and the
base of the top-level sections a family adds to its jobs (``JobSection``: PE-MoE's ``index`` and ``track4``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, Field

from geomoe.core.config.parsing import Strict
from geomoe.core.errors import SpecError

SectionT = TypeVar("SectionT", bound=BaseModel)


class FamilyModelSpec(Strict):
    """The ``model`` section of a job. ``name`` is a registered family (geomoe.core.registry)."""

    name: str

    def with_absolute_paths(self, absolute: Callable[[str], str], is_local: Callable[[str], bool]) -> Self:
        """This section with its local model files made absolute (``absolute``); ``is_local(value)`` says whether
        a value names a local file (hub ids and pretrained tags stay as they are). Default: no files."""
        return self

    def tiny_models_in(self, tag: str) -> list[str]:
        """Overrides that move the tiny random models this section builds (if any) into a folder ``tag`` beside
        their own: a job on other data (a calibration world) builds other ones. Default: it builds none."""
        return []


class JobSection(Strict):
    """A top-level job section of a family's own (``Family.sections``), validated as that family's class only in
    that family's jobs: another family's job that carries it is an error naming the key. An ``output_dir`` left
    out is ``<run folder>/<section name>``; ``path_fields`` are made absolute against the working directory at the
    edge, as the common sections' paths are; ``shared_fields`` are locations a cluster's nodes must share."""

    path_fields: ClassVar[tuple[str, ...]] = ()
    shared_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        unknown = [name for name in (*cls.path_fields, *cls.shared_fields) if name not in cls.model_fields]
        if unknown:
            raise TypeError(f"{cls.__name__}: path_fields / shared_fields name no field of it: {unknown}")


class TrainSpec(Strict):
    """Training settings every family has. ``batch_size`` is the batch of one optimizer step, over all workers
    (``batch_per: global``) or on each (``worker``)."""

    batch_size: int = Field(128, ge=2, description="batch of one optimizer step: see batch_per")
    batch_per: Literal["global", "worker"] = Field(
        "global",
        description="global: batch_size is split across the workers; worker: each worker runs batch_size, so a step "
        "sees batch_size x workers (PE-MoE's '8 GPUs with a batch size of 128' reads either way)",
    )
    grad_accumulation: int = Field(
        1, ge=1, description="micro-batches per optimizer step (each worker runs its share of the step / this at once)"
    )
    lr: float = Field(2e-5, gt=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    mixed_precision: bool = Field(True, description="bf16 autocast on GPU; ignored on CPU")
    max_failures: int = Field(1, ge=0)
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per stage (best ones + the latest)")
    materialize_inputs: bool = Field(False, description="decode training inputs once into the object store")

    def global_batch(self, workers: int) -> int:
        """The rows of one optimizer step over all ``workers``."""
        return self.batch_size * (workers if self.batch_per == "worker" else 1)

    def fields_ignored_by_stage(self, stage: int) -> frozenset[str]:
        """Fields a training stage does not depend on: changing them keeps that stage's finished result."""
        return frozenset()


def as_section(
    section: BaseModel, kind: type[SectionT], where: str = "spec", family: str | None = None, key: str = "model.name"
) -> SectionT:
    """A family section (``model``, ``train`` or one of its own) as the family's own class ``kind``: what a
    family's code that takes the section needs; a SpecError naming ``key`` when the job is another family's."""
    if not isinstance(section, kind):
        family = family or str(getattr(section, "name", type(section).__name__))
        raise SpecError(where, key, f"{family} jobs have no {kind.__name__} section")
    return section
