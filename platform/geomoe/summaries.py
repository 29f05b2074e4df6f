"""Plain-text summaries of the shared stages (prepare, refine, caption, index) printed by the CLI (no Ray)."""

from __future__ import annotations

from typing import Any


def manifest_summary(manifest: dict[str, Any]) -> str:
    lines = [f"prepared {manifest['total']} rows from {manifest['input_records']} records -> {manifest['table']}"]
    groups = sorted({g for split in manifest["rows"].values() for g in split})
    header = f"  {'split':<8}" + "".join(f"{g:>22}" for g in groups)
    lines.append(header)
    for split, row in manifest["rows"].items():
        lines.append(f"  {split:<8}" + "".join(f"{row.get(g, 0):>22}" for g in groups))
    if "augmented_rows" in manifest:
        lines.append(f"  augmented satellite rows (sanitised captions): {manifest['augmented_rows']}")
    if manifest.get("images"):
        images = manifest["images"]
        lines.append(f"  image bytes: {images['shards']} shard(s), {images['bytes'] / 1e6:.1f} MB -> {images['table']}")
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
