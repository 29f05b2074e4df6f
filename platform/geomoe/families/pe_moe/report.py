"""PE-MoE's results as the CLI prints them: the R@K table per protocol with intervals, the paired differences,
a sample query, and the index stage's summary (no Ray)."""

from __future__ import annotations

from typing import Any

from geomoe.core.stats import format_interval, paired_difference
from geomoe.families.pe_moe.results import PEMoEResult, Recall, StageEvaluation


def _with_interval(values: dict[str, float], bounds: dict[str, Any], key: str, width: int = 19) -> str:
    return f" {format_interval(values[key], bounds.get(key)):>{width - 1}}"


def _row(label: str, recall: Recall, routing: str) -> str:
    values = recall.at | {"Score": recall.score if recall.score is not None else float("nan")}
    cells = "".join(_with_interval(values, recall.interval, k) for k in ("R@1", "R@5", "R@10", "Score"))
    return f"  {label:<34}{cells}{routing:>9}"


def retrieval_table(train_results: dict[str, PEMoEResult], protocol: str = "exact") -> str:
    """R@K table of every trained model (main and baselines) and stage, plus chance, for one protocol; each number
    with its 95% bootstrap interval over the queries, then the paired differences that matter."""
    lines = [
        f"text -> image retrieval, {protocol} protocol (%, [95% bootstrap interval over queries])",
        f"  {'model':<34}{'R@1':>19}{'R@5':>19}{'R@10':>19}{'Score':>19}{'routing':>9}",
    ]
    chance = None
    for name, result in train_results.items():
        for stage, evaluation in result.stages.items():
            routing = "-" if evaluation.routing is None else f"{evaluation.routing:.1f}"
            lines.append(_row(f"{name} {stage}", evaluation.retrieval[protocol], routing))
            if stage == result.final_stage:  # re-ranking is shown for the final model only
                for method, reranked in evaluation.reranked.items():
                    lines.append(_row(f"{name} {stage} +{method}", reranked[protocol], "-"))
            chance = evaluation.chance[protocol]
    if chance:
        lines.append(f"  {'chance':<34}" + "".join(f"{chance[k]:>19.2f}" for k in ("R@1", "R@5", "R@10")))
    lines += retrieval_differences(train_results, protocol)
    return "\n".join(lines)


Compared = tuple[str, Recall, str | None, Recall, str | None]  # label, a and its query set, b and its query set


def _compared(train_results: dict[str, PEMoEResult], protocol: str) -> list[Compared]:
    """The model's stage 2 against its stage 1, what each re-ranking adds to the final stage (on the same
    queries), and the model against each baseline (final stages)."""
    model = train_results["model"]
    stages, stage, final = model.stages, model.final_stage, model.final
    pairs = []
    if "stage1" in stages and "stage2" in stages:
        one, two = stages["stage1"], stages["stage2"]
        pairs.append(("model stage2 - stage1", two.retrieval[protocol], two.query_set, one.retrieval[protocol],
                      one.query_set))  # fmt: skip
    for method, reranked in final.reranked.items():
        pairs.append((f"model {stage} +{method} - {stage}", reranked[protocol], final.query_set,
                      final.retrieval[protocol], final.query_set))  # fmt: skip
    for name, result in train_results.items():
        if name != "model":
            base = result.final
            pairs.append((f"model {stage} - {name} {result.final_stage}", final.retrieval[protocol], final.query_set,
                          base.retrieval[protocol], base.query_set))  # fmt: skip
    return pairs


def retrieval_differences(
    train_results: dict[str, PEMoEResult], protocol: str, metrics: tuple[str, ...] = ("R@1", "R@10")
) -> list[str]:
    """Paired differences on the same queries (``_compared``). A difference is called out (*) only when its 95%
    interval excludes 0."""
    if "model" not in train_results:
        return []
    lines = []
    for label, a, a_queries, b, b_queries in _compared(train_results, protocol):
        if a.ranks is None or b.ranks is None or a_queries is None or a_queries != b_queries:
            continue  # paired only over the same queries against the same gallery
        va, vb = a.values(), b.values()
        cells = []
        for m in metrics:
            if m in va:
                d = paired_difference(va[m], vb[m])
                cells.append(f"{m} {d}{' *' if d.significant else ''}")
        lines.append(f"  {label:<36}" + "   ".join(cells))
    if lines:
        lines.insert(0, "  paired differences (95% interval; * = excludes 0):")
    return lines


def sample_query(evaluation: StageEvaluation) -> str:
    sample = evaluation.sample
    assert sample is not None  # every evaluation records one
    lines = [f"sample query: {sample['query']!r} (building {sample['building']})"]
    for rank, hit in enumerate(sample["top5"], start=1):
        mark = "*" if hit["same_building"] else " "
        lines.append(f"  {rank}. {mark} {hit['image_id']:<28} {hit['score']:.3f}")
    lines.append("  (* = the query's building)")
    return "\n".join(lines)


def index_summary(report: dict[str, Any]) -> str:
    lines = [
        f"serving index: {report['count']} {report['split']} images x {report['dim']} ({report['dtype']}, "
        f"experts {'/'.join(report['experts'])}) in {report['seconds']} s"
    ]
    for kind, faiss in report.get("faiss", {}).items():
        recall = {k: v for k, v in faiss.items() if k.startswith("recall")}
        lines.append(f"  faiss {kind}: " + ", ".join(f"{k} {v}" for k, v in recall.items()))
    return "\n".join(lines)
