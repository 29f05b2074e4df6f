"""Plain-text summaries printed by the CLI (no Ray)."""

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
    rejected = manifest["rejected"]
    lines.append(
        f"  rejected records: {rejected['count']}" + (f" {rejected['by_reason']}" if rejected["count"] else "")
    )
    return "\n".join(lines)
