"""The PE-MoE family: text query -> image over a mixed satellite/drone/ground gallery (platform experts, a gate,
two-stage training with mined hard negatives), plus its stages ``index`` (the serving index) and
``track4_submission``. Registered through the ``geomoe.families`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from geomoe.core.config import FamilyModelSpec, JobSpec, TrainSpec, as_section
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.stages import Stage, section_output
from geomoe.families.base import Family, Loaded
from geomoe.families.pe_moe.report import index_summary
from geomoe.families.pe_moe.results import PEMoEResult, Recall, protocol_prefix
from geomoe.families.pe_moe.spec import IndexSpec, PEMoEModelSpec, PEMoETrainSpec, Track4Spec

if TYPE_CHECKING:
    import torch

    from geomoe.on_ray.train.loop import LoopConfig, TrainingTask


def _checked_stage(
    stage: str, key: str, kind: type[IndexSpec] | type[Track4Spec], needs: str
) -> Callable[[JobSpec], None]:
    """A stage that reads the ``key`` section and a checkpoint: given there, or trained by an earlier stage."""

    def check(spec: JobSpec) -> None:
        section = spec.section(key, kind)
        if section is None:
            raise ValueError(f"stages: stage {stage!r} needs {needs}")
        trained = "train" in spec.stages[: spec.stages.index(stage)]
        if section.checkpoint is None and not trained:
            raise ValueError(f"{key}.checkpoint: stage {stage!r} needs a checkpoint, or a 'train' stage before it")

    return check


INDEX = Stage(
    "index",
    "geomoe.families.pe_moe.pipelines:run_index",
    check=_checked_stage("index", "index", IndexSpec, "an index section (output_dir)"),
    outputs=section_output("index", "output_dir"),
    summary=lambda spec, result: index_summary(result),
)
TRACK4_SUBMISSION = Stage(
    "track4_submission",
    "geomoe.families.pe_moe.submit:run_track4_submission",
    check=_checked_stage("track4_submission", "track4", Track4Spec, "a track4 section (queries, gallery, output_dir)"),
    outputs=section_output("track4", "output_dir"),
)


class PEMoEFamily(Family):
    name = "pe_moe"
    model_spec = PEMoEModelSpec
    train_spec = PEMoETrainSpec
    dataset_kind = "retrieval"
    default = True  # job specs from before SMGeo have no model.name
    stages = (INDEX, TRACK4_SUBMISSION)
    sections = {"index": IndexSpec, "track4": Track4Spec}  # what the two stages read

    def build_model(self, model: FamilyModelSpec) -> torch.nn.Module:
        from geomoe.families.pe_moe.factory import build_pe_moe

        return build_pe_moe(as_section(model, PEMoEModelSpec))[0]

    def load_checkpoint(self, directory: str) -> Loaded:
        from geomoe.families.pe_moe.factory import load_pe_moe

        model, tokenizer, spec, payload = load_pe_moe(directory)
        return Loaded(model, spec, payload, tokenizer)

    def training_task(self, spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
        from geomoe.families.pe_moe.step import training_task

        return training_task(spec, loop, rank)

    def prepare_inputs(self, spec: JobSpec, prepared: PreparedDataset) -> None:
        from geomoe.families.pe_moe.driver import ensure_tiny

        ensure_tiny(spec.model_as(PEMoEModelSpec), prepared, spec.preprocess.max_words_train)

    def training_epochs(self, train: TrainSpec) -> int:
        stages = as_section(train, PEMoETrainSpec)
        return stages.stage1_epochs + stages.stage2_epochs

    def train(self, spec: JobSpec, prepared: PreparedDataset, run_dir: str) -> dict[str, Any]:
        from geomoe.families.pe_moe.driver import train_and_evaluate

        return train_and_evaluate(spec, prepared, run_dir)

    def serve_deployments(self) -> dict[str, Any]:
        from geomoe.families.pe_moe.serving import GallerySearch, QueryEncoder, Reranker

        return {"QueryEncoder": QueryEncoder, "GallerySearch": GallerySearch, "Reranker": Reranker}

    def metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """R@K (and Score) per protocol of the final stage, the protocol as a prefix except for exact; routing."""
        final = PEMoEResult.of(result).final
        metrics = {}
        for protocol, recall in final.retrieval.items():
            metrics.update({f"{protocol_prefix(protocol)}{k}": v for k, v in _with_score(recall).items()})
        if final.routing is not None:
            metrics["routing"] = final.routing
        return metrics

    def tracked_metrics(self, result: dict[str, Any]) -> dict[str, float]:
        """``metrics``, and every evaluated stage's and re-ranking's R@K and Score per protocol: ``stage1.R@1``,
        ``stage2.building.R@1``, ``stage2.reranked.CGRS-scene.R@1``."""
        metrics = self.metrics(result)
        for stage, evaluation in PEMoEResult.of(result).stages.items():
            metrics |= _recalls(stage, evaluation.retrieval)
            for method, reranked in evaluation.reranked.items():
                metrics |= _recalls(f"{stage}.reranked.{method}", reranked)
        return metrics

    def query_values(self, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each caption's hits (R@K, Score) of the final stage, per protocol, named as ``metrics`` names them."""
        values = {}
        for protocol, recall in PEMoEResult.of(result).final.retrieval.items():
            if recall.ranks is not None:  # else an evaluation recorded before per-query ranks were kept
                values.update({f"{protocol_prefix(protocol)}{k}": v for k, v in recall.values().items()})
        return values

    def query_sets(self, result: dict[str, Any]) -> dict[str, str]:
        query_set = PEMoEResult.of(result).final.query_set
        return {} if query_set is None else {name: query_set for name in self.query_values(result)}

    def report(self, spec: JobSpec, results: dict[str, Any]) -> str:
        from geomoe.families.pe_moe.report import retrieval_table, sample_query

        typed = {name: PEMoEResult.of(result) for name, result in results.items()}
        tables = [retrieval_table(typed, protocol) for protocol in spec.eval.protocols]
        return "\n".join([*tables, sample_query(typed["model"].final)])


FAMILY = PEMoEFamily()


def _with_score(recall: Recall) -> dict[str, float]:
    """R@K, and the Score where R@1, R@5 and R@10 were all evaluated (a sweep's and tracking's metric set)."""
    if {"R@1", "R@5", "R@10"} <= set(recall.at) and recall.score is not None:
        return recall.at | {"Score": recall.score}
    return dict(recall.at)


def _recalls(prefix: str, by_protocol: dict[str, Recall]) -> dict[str, float]:
    """``<prefix>[.<protocol>].R@K`` and Score of each protocol's text -> image recalls (exact unnamed)."""
    out: dict[str, float] = {}
    for protocol, recall in by_protocol.items():
        name = prefix if protocol == "exact" else f"{prefix}.{protocol}"
        out |= {f"{name}.{k}": v for k, v in _with_score(recall).items()}
    return out
