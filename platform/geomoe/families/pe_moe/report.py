"""PE-MoE's results as the CLI prints them: the R@K table per protocol with intervals, the paired differences,
a sample query, and the index stage's summary (no Ray)."""

from __future__ import annotations

from typing import Any

from geomoe.metrics import entry_values, track4_score
from geomoe.stats import format_interval, paired_difference


def _with_interval(values: dict[str, Any], bounds: dict[str, Any], key: str, width: int = 19) -> str:
    return f" {format_interval(values[key], bounds.get(key)):>{width - 1}}"


def retrieval_table(train_results: dict[str, Any], protocol: str = "exact") -> str:
    """R@K table of every trained model (main and baselines) and stage, plus chance, for one protocol; each number
    with its 95% bootstrap interval over the queries, then the paired differences that matter."""
    lines = [
        f"text -> image retrieval, {protocol} protocol (%, [95% bootstrap interval over queries])",
        f"  {'model':<34}{'R@1':>19}{'R@5':>19}{'R@10':>19}{'Score':>19}{'routing':>9}",
    ]
    chance = None
    for name, result in train_results.items():
        final = "stage2" if "stage2" in result else "stage1"  # re-ranking is shown for the final model only
        for stage in ("stage1", "stage2"):
            if stage not in result:
                continue
            report = result[stage]
            entry = report["retrieval"][protocol]
            recall, bounds = dict(entry["t2i"]), entry.get("t2i_interval", {})
            recall["Score"] = entry.get("score", float("nan"))
            routing = f"{report['routing_accuracy']:.1f}" if "routing_accuracy" in report else "-"
            cells = "".join(_with_interval(recall, bounds, k) for k in ("R@1", "R@5", "R@10", "Score"))
            lines.append(f"  {name + ' ' + stage:<34}{cells}{routing:>9}")
            for method, reranked in report.get("reranked", {}).items() if stage == final else ():
                again = dict(reranked[protocol]["t2i"])  # images_without_caption: in the JSON
                again["Score"] = track4_score(again) if "R@1" in again and "R@10" in again else float("nan")
                bounds = reranked[protocol].get("t2i_interval", {})
                cells = "".join(_with_interval(again, bounds, k) for k in ("R@1", "R@5", "R@10", "Score"))
                lines.append(f"  {name + ' ' + stage + ' +' + method:<34}{cells}{'-':>9}")
            chance = report["chance"][protocol]
    if chance:
        lines.append(f"  {'chance':<34}" + "".join(f"{chance[k]:>19.2f}" for k in ("R@1", "R@5", "R@10")))
    lines += retrieval_differences(train_results, protocol)
    return "\n".join(lines)


def _final(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    stage = "stage2" if "stage2" in result else "stage1"
    return stage, result[stage]


def retrieval_differences(
    train_results: dict[str, Any], protocol: str, metrics: tuple[str, ...] = ("R@1", "R@10")
) -> list[str]:
    """Paired differences on the same queries: the model's stage 2 against its stage 1, what each re-ranking adds
    to the final stage, and the model against each baseline (final stages). A difference is called out (*) only
    when its 95% interval excludes 0."""
    pairs = []
    model = train_results.get("model")
    if model is None:
        return []
    if "stage1" in model and "stage2" in model:
        pairs.append(("model stage2 - stage1", model["stage2"], model["stage1"]))
    stage, final = _final(model)
    for method, reranked in final.get("reranked", {}).items():  # what re-ranking adds, on the same queries
        as_report = {"retrieval": reranked, "query_set": final.get("query_set")}
        pairs.append((f"model {stage} +{method} - {stage}", as_report, final))
    for name, result in train_results.items():
        if name != "model":
            base_stage, base_final = _final(result)
            pairs.append((f"model {stage} - {name} {base_stage}", final, base_final))
    lines = []
    for label, a, b in pairs:
        ra, rb = a["retrieval"][protocol].get("t2i_ranks"), b["retrieval"][protocol].get("t2i_ranks")
        if ra is None or rb is None or a.get("query_set") is None or a.get("query_set") != b.get("query_set"):
            continue  # paired only over the same queries against the same gallery
        va, vb = entry_values(a["retrieval"][protocol]), entry_values(b["retrieval"][protocol])
        cells = []
        for m in metrics:
            if m in va:
                d = paired_difference(va[m], vb[m])
                cells.append(f"{m} {d}{' *' if d.significant else ''}")
        lines.append(f"  {label:<36}" + "   ".join(cells))
    if lines:
        lines.insert(0, "  paired differences (95% interval; * = excludes 0):")
    return lines


def sample_query(report: dict[str, Any]) -> str:
    sample = report["sample"]
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
