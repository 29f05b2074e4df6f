"""``prepare`` on Ray Data: records -> checked, normalised, augmented rows -> Parquet shards + manifest.

Output layout (a reader trusts a folder only once ``manifest.json`` exists; it is written last):
    <output_dir>/pairs/split=<split>/platform=<platform>/*.parquet     (retrieval)
    <output_dir>/samples/split=<split>/*.parquet                       (localization)
    <output_dir>/augmented/*.jpg                                       (satellite copies)
    <output_dir>/manifest.json
Rerunning with the same inputs and options is a no-op unless ``preprocess.force``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from geomoe import __version__
from geomoe.config import JobSpec
from geomoe.data.prepare import PREPARED_SCHEMA, RowPreparer, check_localization_rows
from geomoe.data.records import LOCALIZATION_SCHEMA, RETRIEVAL_SCHEMA, RejectLog, records_to_table
from geomoe.data.refine_rules import load_rules
from geomoe.data.sources import SourceRecords, read_source
from geomoe.io import text_sha256, write_json_atomic

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def _refinement(spec: JobSpec) -> dict[str, Any] | None:
    """Which refinement the training captions get, with the rules' hash (part of the inputs)."""
    if spec.preprocess.refine == "none":
        return None
    rules = load_rules(spec.preprocess.refine_rules)
    return {"engine": "rules", "rules": spec.preprocess.refine_rules or "builtin:v1", "rules_sha256": rules.sha256}


def _inputs_key(spec: JobSpec, source: SourceRecords) -> str:
    options = spec.preprocess.model_dump(exclude={"force", "rows_per_file"})
    blob = json.dumps(
        {
            "data": spec.data.model_dump(mode="json", exclude={"synthesize"}),
            "options": options,
            "refine": _refinement(spec),
            "files": source.files,
            "seed": spec.seed,
        },
        sort_keys=True,
    )
    return text_sha256(blob)


def finished_manifest(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _partition(batch: pa.Table, good: bool) -> pa.Table:
    mask = pc.equal(batch["reject"], "")
    return batch.filter(mask if good else pc.invert(mask))


def _process(spec: JobSpec, source: SourceRecords, out: Path) -> Any:
    import ray.data

    concurrency = spec.resources.data_concurrency
    if source.kind == "retrieval":
        table = records_to_table(source.retrieval, RETRIEVAL_SCHEMA)
        (out / "augmented").mkdir(parents=True, exist_ok=True)
        preparer = RowPreparer(spec.preprocess, str((out / "augmented").resolve()), spec.seed)
        fn = lambda t: pa.Table.from_pylist(preparer(t.to_pylist()), schema=PREPARED_SCHEMA)  # noqa: E731
    else:
        table = records_to_table(source.localization, LOCALIZATION_SCHEMA)
        checked_schema = LOCALIZATION_SCHEMA.append(pa.field("reject", pa.string()))
        check = spec.preprocess.validate_images
        fn = lambda t: pa.Table.from_pylist(check_localization_rows(t.to_pylist(), check), schema=checked_schema)  # noqa: E731
    # Contiguous slices, not repartition(): an all-to-all shuffle costs more than the map on small data,
    # and contiguity keeps an image's captions together so its decode check is cached within a batch.
    blocks = max(1, min(len(table) // 256, 4 * concurrency))
    step = -(-len(table) // blocks)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])
    return ds.map_batches(
        fn, batch_format="pyarrow", batch_size=512, compute=ray.data.TaskPoolStrategy(size=concurrency), num_cpus=1
    ).materialize()


def _counts(processed: Any, kind: str) -> dict[str, Any]:
    group = "platform" if kind == "retrieval" else "class_name"
    columns = ["split", group] + (["augment"] if kind == "retrieval" else [])
    frame = processed.select_columns(columns).to_pandas()
    rows: dict[str, dict[str, int]] = {}
    for (split, name), n in sorted(Counter(zip(frame["split"], frame[group], strict=True)).items()):
        rows.setdefault(str(split), {})[str(name)] = int(n)
    counts: dict[str, Any] = {"rows": rows, "total": len(frame)}
    if kind == "retrieval":
        counts["augmented_rows"] = int((frame["augment"] != "").sum())
    return counts


def _write_table(good: Any, out: Path, kind: str, rows_per_file: int) -> Path:
    """Write Parquet shards to a temporary folder, then swap it into place."""
    table_dir = out / ("pairs" if kind == "retrieval" else "samples")
    tmp_dir = out / f".{table_dir.name}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    partition = ["split", "platform"] if kind == "retrieval" else ["split"]
    good.write_parquet(str(tmp_dir.resolve()), partition_cols=partition, max_rows_per_file=rows_per_file)
    shutil.rmtree(table_dir, ignore_errors=True)
    tmp_dir.rename(table_dir)
    return table_dir


def prepare(spec: JobSpec) -> dict[str, Any]:
    """Run the prepare stage of ``spec``; return the manifest (an existing one if inputs are unchanged)."""
    from geomoe.ray_env import ensure_ray

    out = Path(spec.preprocess.output_dir)
    rejects = RejectLog(spec.preprocess.on_bad_record)
    started = time.perf_counter()
    source = read_source(spec.data, rejects)
    key = _inputs_key(spec, source)
    existing = finished_manifest(out)
    if existing and existing.get("inputs_key") == key and not spec.preprocess.force:
        log.info("prepare: %s is up to date; nothing to do", out)
        return existing
    ensure_ray(spec.resources)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the folder is unfinished
    processed = _process(spec, source, out)
    for row in processed.map_batches(lambda t: _partition(t, False), batch_format="pyarrow").take_all():
        rejects.reject(row["source"], row["record"], row["reject"])  # raises under on_bad_record=fail
    good = processed.map_batches(lambda t: _partition(t, True).drop_columns(["reject"]), batch_format="pyarrow")
    good = good.materialize()
    table_dir = _write_table(good, out, source.kind, spec.preprocess.rows_per_file)
    manifest = {
        "geomoe_version": __version__,
        "job": spec.name,
        "kind": source.kind,
        "inputs_key": key,
        "source": {"format": spec.data.format, "root": str(Path(spec.data.root).resolve()), "files": source.files},
        "preprocess": spec.preprocess.model_dump(mode="json"),
        "table": str(table_dir.resolve()),
        "input_records": len(source),
        **_counts(good, source.kind),
        "refine": _refinement(spec),
        "rejected": {
            "count": len(rejects),
            "by_reason": rejects.reasons(),
            "rows": [r.to_row() for r in rejects.rejects],
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
