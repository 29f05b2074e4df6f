"""SMGeo's train result, typed (core, no Ray): what the family's hooks and its table read.

``Family.train`` returns JSON (it crosses Ray tasks and lands in ``results.json``); ``SMGeoResult.of`` reads it once
at the family's boundary. Reports recorded before a field existed read back with it empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomoe.core.metrics import localization_values


@dataclass(frozen=True)
class Localization:
    """One method's DetGeo report on one split (``localization_report``): acc@0.25, acc@0.5, mIoU (%) overall with
    95% intervals, each sample's IoU (for paired comparisons), per size bucket and per class."""

    overall: dict[str, float]
    count: int
    interval: dict[str, list[float]] = field(default_factory=dict)
    iou: list[float] | None = None
    query_set: str | None = None
    by_size: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_class: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, report: Mapping[str, Any]) -> Localization:
        overall = {k: float(v) for k, v in report["overall"].items() if isinstance(v, int | float)}
        return cls(
            overall=overall,
            count=int(report.get("count", 0)),
            interval=dict(report.get("interval", {})),
            iou=report.get("iou"),
            query_set=report.get("query_set"),
            by_size=dict(report.get("by_size", {})),
            by_class=dict(report.get("by_class", {})),
        )

    def values(self) -> dict[str, np.ndarray]:
        """Each sample's hit per threshold and IoU (%): the values whose means are ``overall``."""
        assert self.iou is not None, "per-sample values need the IoUs"
        return localization_values(np.array(self.iou))


@dataclass(frozen=True)
class SMGeoResult:
    """One model's train result: the kept epoch's validation report and the test reports of SMGeo and its
    baselines by method name (and of SMGeo on the validation split)."""

    checkpoint: str | None
    best_epoch: int | None
    validation: dict[str, float]
    test: dict[str, Localization]

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> SMGeoResult:
        validation = {k: float(v) for k, v in result.get("validation", {}).items() if isinstance(v, int | float)}
        best = result.get("best_epoch")
        return cls(
            checkpoint=result.get("checkpoint"),
            best_epoch=None if best is None else int(best),
            validation=validation,
            test={name: Localization.of(report) for name, report in result["test"].items()},
        )
