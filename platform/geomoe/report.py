"""Plain-text summaries printed by the CLI (no Ray)."""

from __future__ import annotations

from typing import Any

from geomoe.metrics import track4_score


def manifest_summary(manifest: dict[str, Any]) -> str:
    lines = [f"prepared {manifest['total']} rows from {manifest['input_records']} records -> {manifest['table']}"]
    groups = sorted({g for split in manifest["rows"].values() for g in split})
    header = f"  {'split':<8}" + "".join(f"{g:>22}" for g in groups)
    lines.append(header)
    for split, row in manifest["rows"].items():
        lines.append(f"  {split:<8}" + "".join(f"{row.get(g, 0):>22}" for g in groups))
    if "augmented_rows" in manifest:
        lines.append(f"  augmented satellite rows (sanitised captions): {manifest['augmented_rows']}")
    rejected = manifest["rejected"]
    lines.append(
        f"  rejected records: {rejected['count']}" + (f" {rejected['by_reason']}" if rejected["count"] else "")
    )
    return "\n".join(lines)


def refine_summary(manifest: dict[str, Any]) -> str:
    r = manifest["refinement"]
    return (
        f"refined captions ({r['engine']['kind']} {r['engine']['model']}): {r['rows_refined']} refined, "
        f"{r['rows_kept']} kept {r['kept_by_reason']}; shards {r['shards_refined']} done, {r['shards_reused']} reused"
    )


def index_summary(report: dict[str, Any]) -> str:
    lines = [
        f"serving index: {report['count']} {report['split']} images x {report['dim']} ({report['dtype']}, "
        f"experts {'/'.join(report['experts'])}) in {report['seconds']} s"
    ]
    for kind, faiss in report.get("faiss", {}).items():
        recall = {k: v for k, v in faiss.items() if k.startswith("recall")}
        lines.append(f"  faiss {kind}: " + ", ".join(f"{k} {v}" for k, v in recall.items()))
    return "\n".join(lines)


def caption_summary(report: dict[str, Any]) -> str:
    lines = [
        f"gallery captions ({report['model_id']}): {report['captioned']} of {report['images']} images captioned, "
        f"failed {report['failed_by_reason']} -> {report['store']}"
    ]
    lines += [f"  {image_id}: {caption!r}" for image_id, caption in report.get("examples", [])]
    return "\n".join(lines)


def retrieval_table(train_results: dict[str, Any], protocol: str = "exact") -> str:
    """R@K table of every trained model (main and baselines) and stage, plus chance, for one protocol."""
    lines = [
        f"text -> image retrieval, {protocol} protocol (%)",
        f"  {'model':<34}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'Score':>8}{'routing':>9}",
    ]
    chance = None
    for name, result in train_results.items():
        final = "stage2" if "stage2" in result else "stage1"  # re-ranking is shown for the final model only
        for stage in ("stage1", "stage2"):
            if stage not in result:
                continue
            report = result[stage]
            recall = report["retrieval"][protocol]["t2i"]
            routing = f"{report['routing_accuracy']:.1f}" if "routing_accuracy" in report else "-"
            label = f"{name} {stage}"
            lines.append(
                f"  {label:<34}{recall['R@1']:>8.2f}{recall['R@5']:>8.2f}{recall['R@10']:>8.2f}"
                f"{report['retrieval'][protocol].get('score', float('nan')):>8.2f}{routing:>9}"
            )
            for method, reranked in report.get("reranked", {}).items() if stage == final else ():
                again = reranked[protocol]["t2i"]  # images_without_caption: in the JSON
                label = f"{name} {stage} +{method}"
                score = track4_score(again) if "R@1" in again and "R@10" in again else float("nan")
                lines.append(
                    f"  {label:<34}{again['R@1']:>8.2f}{again['R@5']:>8.2f}{again['R@10']:>8.2f}{score:>8.2f}{'-':>9}"
                )
            chance = report["chance"][protocol]
    if chance:
        lines.append(f"  {'chance':<34}{chance['R@1']:>8.2f}{chance['R@5']:>8.2f}{chance['R@10']:>8.2f}")
    return "\n".join(lines)


def sample_query(report: dict[str, Any]) -> str:
    sample = report["sample"]
    lines = [f"sample query: {sample['query']!r} (building {sample['building']})"]
    for rank, hit in enumerate(sample["top5"], start=1):
        mark = "*" if hit["same_building"] else " "
        lines.append(f"  {rank}. {mark} {hit['image_id']:<28} {hit['score']:.3f}")
    lines.append("  (* = the query's building)")
    return "\n".join(lines)
