"""The PE-MoE family: text query -> image over a mixed satellite/drone/ground gallery (platform experts, a gate,
two-stage training with mined hard negatives), plus its stages ``index`` (the serving index) and
``track4_submission``. Registered through the ``geomoe.families`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from geomoe.config import JobSpec
from geomoe.data.prepared import PreparedDataset
from geomoe.families.base import Family, Loaded
from geomoe.families.pe_moe.report import index_summary
from geomoe.families.pe_moe.spec import PEMoEModelSpec, PEMoETrainSpec
from geomoe.metrics import entry_values, track4_score
from geomoe.stages import Stage

if TYPE_CHECKING:
    import torch

    from geomoe.train.engine import LoopConfig, TrainingTask


def _checked_stage(stage: str, key: str, needs: str) -> Callable[[JobSpec], None]:
    """A stage that reads the ``key`` section and a checkpoint: given there, or trained by an earlier stage."""

    def check(spec: JobSpec) -> None:
        section = getattr(spec, key)
        if section is None:
            raise ValueError(f"stages: stage {stage!r} needs {needs}")
        trained = "train" in spec.stages[: spec.stages.index(stage)]
        if section.checkpoint is None and not trained:
            raise ValueError(f"{key}.checkpoint: stage {stage!r} needs a checkpoint, or a 'train' stage before it")

    return check


INDEX = Stage(
    "index",
    "geomoe.families.pe_moe.pipelines:run_index",
    check=_checked_stage("index", "index", "an index section (output_dir)"),
    outputs=lambda spec: [("index.output_dir", spec.index.output_dir)] if spec.index else [],
    summary=lambda spec, result: index_summary(result),
)
TRACK4_SUBMISSION = Stage(
    "track4_submission",
    "geomoe.families.pe_moe.pipelines:run_track4_submission",
    check=_checked_stage("track4_submission", "track4", "a track4 section (queries, gallery, output_dir)"),
    outputs=lambda spec: [("track4.output_dir", spec.track4.output_dir)] if spec.track4 else [],
)


class PEMoEFamily(Family):
    name = "pe_moe"
    model_spec = PEMoEModelSpec
    train_spec = PEMoETrainSpec
    dataset_kind = "retrieval"
    default = True  # job specs from before SMGeo have no model.name
    stages = (INDEX, TRACK4_SUBMISSION)

    def build_model(self, spec: JobSpec) -> torch.nn.Module:
        from geomoe.families.pe_moe.factory import build_pe_moe

        return build_pe_moe(spec.model_as(PEMoEModelSpec))[0]

    def load_checkpoint(self, directory: str) -> Loaded:
        from geomoe.families.pe_moe.factory import load_pe_moe

        model, tokenizer, spec, payload = load_pe_moe(directory)
        return Loaded(model, spec, payload, tokenizer)

    def training_task(self, spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
        from geomoe.families.pe_moe.step import training_task

        return training_task(spec, loop, rank)

    def prepare_inputs(self, spec: JobSpec, prepared: PreparedDataset) -> None:
        from geomoe.families.pe_moe.driver import ensure_tiny

        ensure_tiny(spec, prepared)

    def training_epochs(self, spec: JobSpec) -> int:
        train = spec.train_as(PEMoETrainSpec)
        return train.stage1_epochs + train.stage2_epochs

    def train(self, spec: JobSpec, prepared: PreparedDataset, run_dir: str) -> dict[str, Any]:
        from geomoe.families.pe_moe.driver import train_and_evaluate

        return train_and_evaluate(spec, prepared, run_dir)

    def serve_deployments(self) -> dict[str, Any]:
        from geomoe.families.pe_moe.serving import GallerySearch, QueryEncoder, Reranker

        return {"QueryEncoder": QueryEncoder, "GallerySearch": GallerySearch, "Reranker": Reranker}

    def metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """R@K (and Score) per protocol of the final stage, the protocol as a prefix except for exact; routing."""
        final = result.get("stage2") or result["stage1"]
        metrics = {}
        for protocol, report in final["retrieval"].items():
            prefix = "" if protocol == "exact" else f"{protocol}_"
            recall = report["t2i"]
            metrics.update({f"{prefix}{k}": float(v) for k, v in recall.items()})
            if {"R@1", "R@5", "R@10"} <= set(recall):
                metrics[f"{prefix}Score"] = track4_score(recall)
        if "routing_accuracy" in final:
            metrics["routing"] = float(final["routing_accuracy"])
        return metrics

    def tracked_metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """``metrics``, and every evaluated stage's and re-ranking's R@K and Score per protocol: ``stage1.R@1``,
        ``stage2.building.R@1``, ``stage2.reranked.CGRS-scene.R@1``."""
        metrics = self.metrics(result)
        for stage in ("stage1", "stage2"):
            report = result.get(stage)
            if report is None:
                continue
            metrics |= _recalls(stage, report["retrieval"])
            for method, reranked in report.get("reranked", {}).items():
                metrics |= _recalls(f"{stage}.reranked.{method}", reranked)
        return metrics

    def query_values(self, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each caption's hits (R@K, Score) of the final stage, per protocol, named as ``metrics`` names them."""
        final = result.get("stage2") or result["stage1"]
        values = {}
        for protocol, report in final["retrieval"].items():
            if "t2i_ranks" not in report:  # an evaluation recorded before per-query ranks were kept
                continue
            prefix = "" if protocol == "exact" else f"{protocol}_"
            values.update({f"{prefix}{k}": v for k, v in entry_values(report).items()})
        return values

    def query_sets(self, result: dict[str, Any]) -> dict[str, str]:
        final = result.get("stage2") or result["stage1"]
        if "query_set" not in final:
            return {}
        return {name: final["query_set"] for name in self.query_values(result)}

    def report(self, spec: JobSpec, results: dict[str, Any]) -> str:
        from geomoe.families.pe_moe.report import retrieval_table, sample_query

        tables = [retrieval_table(results, protocol) for protocol in spec.eval.protocols]
        final = results["model"]
        return "\n".join([*tables, sample_query(final.get("stage2") or final["stage1"])])


FAMILY = PEMoEFamily()


def _recalls(prefix: str, by_protocol: dict[str, Any]) -> dict[str, float]:
    """``<prefix>[.<protocol>].R@K`` and Score of each protocol's text -> image recalls (exact unnamed)."""
    out: dict[str, float] = {}
    for protocol, entry in by_protocol.items():
        if not isinstance(entry, dict) or "t2i" not in entry:
            continue  # images_without_caption, beside a re-ranking's protocols
        name = prefix if protocol == "exact" else f"{prefix}.{protocol}"
        recall = {k: float(v) for k, v in entry["t2i"].items()}
        out |= {f"{name}.{k}": v for k, v in recall.items()}
        if {"R@1", "R@5", "R@10"} <= set(recall):
            out[f"{name}.Score"] = track4_score(recall)
    return out
