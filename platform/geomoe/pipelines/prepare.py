"""``prepare`` on Ray Data: records -> checked, normalised, augmented rows -> Parquet shards + manifest.

Output layout, at a local path or a URI (a reader trusts a folder only once ``manifest.json`` exists; it is
written last, and removed first when a rerun starts over):
    <output_dir>/pairs/split=<split>/platform=<platform>/*.parquet     (retrieval)
    <output_dir>/samples/split=<split>/*.parquet                       (localization)
    <output_dir>/augmented/*.jpg                                       (satellite copies)
    <output_dir>/manifest.json
Rerunning with the same inputs and options is a no-op unless ``preprocess.force``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from geomoe import __version__, ownership, storage
from geomoe.config import JobSpec
from geomoe.data.prepare import PREPARED_SCHEMA, RowPreparer, check_localization_rows
from geomoe.data.records import LOCALIZATION_SCHEMA, RETRIEVAL_SCHEMA, RejectLog, records_to_table
from geomoe.data.refine_rules import load_rules
from geomoe.data.sources import SourceRecords, read_source

log = logging.getLogger(__name__)
MANIFEST = storage.MANIFEST


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
    return storage.text_sha256(blob)


def finished_manifest(output_dir: str) -> dict[str, Any] | None:
    """The manifest of a finished prepare (or refine) output, or None when the folder is absent or unfinished."""
    found = storage.read_json_if_exists(storage.join(output_dir, MANIFEST))
    return None if found is None else dict(found)


def _partition(batch: pa.Table, good: bool) -> pa.Table:
    mask = pc.equal(batch["reject"], "")
    return batch.filter(mask if good else pc.invert(mask))


def _process(spec: JobSpec, source: SourceRecords, out: str) -> pa.Table:
    """Every record's output rows, checked and prepared by Ray Data tasks in parallel (the per-row work: image
    decode checks, caption normalisation, augmented copies). What comes back is row metadata (paths and text,
    a few hundred bytes a row), streamed to the driver as Arrow: one execution of the pipeline, where filtering,
    counting and writing as further Dataset operations would each run the executor again."""
    import ray.data

    concurrency = spec.resources.data_concurrency
    if source.kind == "retrieval":
        table = records_to_table(source.retrieval, RETRIEVAL_SCHEMA)
        preparer = RowPreparer(spec.preprocess, storage.join(out, "augmented"), spec.seed)
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
    records = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])
    prepared = records.map_batches(
        fn, batch_format="pyarrow", batch_size=512, compute=ray.data.TaskPoolStrategy(size=concurrency), num_cpus=1
    )
    rows = pa.concat_tables(list(prepared.iter_batches(batch_size=None, batch_format="pyarrow")))
    # Tasks finish in any order; sorted, the same inputs always write the same files.
    key = "image_id" if source.kind == "retrieval" else "sample_id"
    return rows.sort_by([("source", "ascending"), ("record", "ascending"), (key, "ascending")])


def _counts(good: pa.Table, kind: str) -> dict[str, Any]:
    group = "platform" if kind == "retrieval" else "class_name"
    pairs = zip(good["split"].to_pylist(), good[group].to_pylist(), strict=True)
    rows: dict[str, dict[str, int]] = {}
    for (split, name), n in sorted(Counter(pairs).items()):
        rows.setdefault(str(split), {})[str(name)] = int(n)
    counts: dict[str, Any] = {"rows": rows, "total": good.num_rows}
    if kind == "retrieval":
        counts["augmented_rows"] = int(pc.sum(pc.not_equal(good["augment"], "")).as_py() or 0)
    return counts


def _write_table(good: pa.Table, out: str, kind: str, rows_per_file: int) -> str:
    """Write the hive-partitioned Parquet shards (the manifest is already gone, so nobody trusts the folder
    meanwhile), through the location's own filesystem (local, a mount or object storage)."""
    import pyarrow.dataset as pads

    table_dir = storage.join(out, "pairs" if kind == "retrieval" else "samples")
    storage.delete(table_dir)  # a crashed attempt's shards must not mix with this one's
    partition = ["split", "platform"] if kind == "retrieval" else ["split"]
    fs, path = storage.filesystem_and_path(table_dir)
    pads.write_dataset(
        good,
        path,
        filesystem=fs,
        format="parquet",
        partitioning=partition,
        partitioning_flavor="hive",
        max_rows_per_file=rows_per_file,
        max_rows_per_group=rows_per_file,
        basename_template="part-{i}.parquet",
        existing_data_behavior="overwrite_or_ignore",
    )
    return table_dir


def prepare(spec: JobSpec) -> dict[str, Any]:
    """Run the prepare stage of ``spec``; return the manifest (an existing one if inputs are unchanged)."""
    from geomoe.ray_env import ensure_ray

    out = storage.absolute(spec.preprocess.output_dir)
    rejects = RejectLog(spec.preprocess.on_bad_record)
    started = time.perf_counter()
    source = read_source(spec.data, rejects)
    key = _inputs_key(spec, source)
    existing = finished_manifest(out)
    if existing and existing.get("inputs_key") == key and not spec.preprocess.force:
        log.info("prepare: %s is up to date; nothing to do", out)
        return existing
    ownership.claim_dir(out, ownership.Claim("preprocess.output_dir", spec.name, "prepare"))
    ensure_ray(spec.resources)
    storage.delete(storage.join(out, MANIFEST))  # from here on the folder is unfinished
    processed = _process(spec, source, out)
    for row in _partition(processed, False).select(["source", "record", "reject"]).to_pylist():
        rejects.reject(row["source"], row["record"], row["reject"])  # raises under on_bad_record=fail
    good = _partition(processed, True).drop_columns(["reject"])
    table_dir = _write_table(good, out, source.kind, spec.preprocess.rows_per_file)
    manifest = {
        "geomoe_version": __version__,
        "job": spec.name,
        "kind": source.kind,
        "inputs_key": key,
        "source": {"format": spec.data.format, "root": storage.absolute(spec.data.root), "files": source.files},
        "preprocess": spec.preprocess.model_dump(mode="json"),
        "location": out,
        "table": table_dir,
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
    storage.write_json_atomic(storage.join(out, MANIFEST), manifest)
    return manifest
