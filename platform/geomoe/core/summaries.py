"""Plain-text summaries of the shared stages (prepare, refine, caption, train) printed by the CLI (no Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geomoe.core import registry
from geomoe.core.job_results import BY_SEED

if TYPE_CHECKING:
    from geomoe.core.config import JobSpec


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


def caption_summary(report: dict[str, Any]) -> str:
    lines = [
        f"gallery captions ({report['model_id']}): {report['captioned']} of {report['images']} images captioned, "
        f"failed {report['failed_by_reason']} -> {report['store']}"
    ]
    lines += [f"  {image_id}: {caption!r}" for image_id, caption in report.get("examples", [])]
    return "\n".join(lines)


def train_report(spec: JobSpec, train: dict[str, Any]) -> str:
    """The train stage's results as the CLI prints them: the family's tables (the first seed's, with seeds), then
    with seeds the mean ± std of every metric over the seeds with the pooled 95% interval."""
    from geomoe.core.stats import format_spread, interval, mean_std, pooled_over_seeds

    family = registry.family(spec.model.name)
    by_seed = train.get(BY_SEED)
    text: str = family.report(spec, {k: v for k, v in train.items() if k != BY_SEED})
    if not by_seed:
        return text
    lines = [f"over seeds {list(by_seed)} (above: seed {next(iter(by_seed))}): mean ± std [pooled 95% interval]"]
    for name in next(iter(by_seed.values())):
        results = [seeded[name] for seeded in by_seed.values()]
        metrics = [family.metrics(r) for r in results]
        values, sets = [family.query_values(r) for r in results], [family.query_sets(r) for r in results]
        for metric in metrics[0]:
            mean, std = mean_std([m[metric] for m in metrics])
            per_query = pooled_over_seeds([v.get(metric) for v in values], [q.get(metric) for q in sets])
            cell = format_spread(mean, std, None if per_query is None else interval(per_query))
            lines.append(f"  {name} {metric}: {cell}")
    return text + "\n" + "\n".join(lines)
