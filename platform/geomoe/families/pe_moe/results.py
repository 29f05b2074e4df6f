"""PE-MoE's train result, typed (core, no Ray): what the family's hooks, its report and its sweeps read.

``train_and_evaluate`` returns JSON (it crosses Ray tasks and lands in ``results.json`` and ``eval_stage<N>.json``);
``PEMoEResult.of`` reads it once at the family's boundary, so no hook walks ``result["stage2"]["retrieval"]
["exact"]["t2i"]`` by string keys. Evaluations recorded before a field existed read back with it empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomoe.core.metrics import recall_values, track4_score

STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class Recall:
    """One protocol's text -> image recall: R@K (%), their 95% intervals, and each query's rank capped at
    max(K) (None for an evaluation recorded before per-query ranks were kept)."""

    at: dict[str, float]
    interval: dict[str, list[float]] = field(default_factory=dict)
    ranks: list[int] | None = None
    score: float | None = None  # Track 4's (R@1 + R@10) / 2, when both are among the Ks

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Recall:
        at = {k: float(v) for k, v in entry["t2i"].items()}
        score = track4_score(at) if {"R@1", "R@10"} <= set(at) else None
        return cls(at, dict(entry.get("t2i_interval", {})), entry.get("t2i_ranks"), score)

    def values(self) -> dict[str, np.ndarray]:
        """Each query's hit per R@K (and Score): the values whose means are ``with_score``."""
        assert self.ranks is not None, "per-query values need the ranks"
        return recall_values(np.array(self.ranks), [int(k.removeprefix("R@")) for k in self.at])


@dataclass(frozen=True)
class StageEvaluation:
    """A trained stage's test evaluation (``evaluate_pe_moe``): recall per protocol, re-ranked recall per method and
    protocol, gate routing accuracy (%), which queries against which gallery (``query_set``), chance, a sample."""

    retrieval: dict[str, Recall]
    reranked: dict[str, dict[str, Recall]]
    routing: float | None
    query_set: str | None
    chance: dict[str, dict[str, float]]
    sample: dict[str, Any] | None

    @classmethod
    def of(cls, report: Mapping[str, Any]) -> StageEvaluation:
        reranked = {
            method: {p: Recall.of(e) for p, e in by_protocol.items() if isinstance(e, Mapping) and "t2i" in e}
            for method, by_protocol in report.get("reranked", {}).items()
        }  # beside the protocols: images_without_caption
        routing = report.get("routing_accuracy")
        return cls(
            retrieval={p: Recall.of(e) for p, e in report["retrieval"].items()},
            reranked=reranked,
            routing=None if routing is None else float(routing),
            query_set=report.get("query_set"),
            chance=dict(report.get("chance", {})),
            sample=report.get("sample"),
        )


@dataclass(frozen=True)
class PEMoEResult:
    """One model's train result: its evaluated stages in order, the final one last, and the kept checkpoint."""

    stages: dict[str, StageEvaluation]
    checkpoint: str | None

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> PEMoEResult:
        stages = {name: StageEvaluation.of(result[name]) for name in STAGES if name in result}
        return cls(stages, result.get("checkpoint"))

    @property
    def final_stage(self) -> str:
        return list(self.stages)[-1]

    @property
    def final(self) -> StageEvaluation:
        return self.stages[self.final_stage]


def protocol_prefix(protocol: str) -> str:
    """How a protocol prefixes a metric's name: exact unnamed (``R@1``), the others named (``building_R@1``)."""
    return "" if protocol == "exact" else f"{protocol}_"
