"""``prepare`` on Ray Data: records -> checked, normalised, augmented rows -> Parquet shards + manifest.

Output layout, at a local path or a URI (a reader trusts a folder only once ``manifest.json`` exists; it is
written last, and removed first when a rerun starts over):
    <output_dir>/pairs/split=<split>/platform=<platform>/*.parquet     (retrieval)
    <output_dir>/samples/split=<split>/*.parquet                       (localization)
    <output_dir>/images/part-*.parquet     (every image's bytes, satellite copies included: data.image_table)
    <output_dir>/manifest.json
Rerunning with the same inputs and options is a no-op unless ``preprocess.force``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geomoe import __version__
from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec, PreprocessSpec
from geomoe.core.data import image_table
from geomoe.core.data.preprocess import PREPARED_SCHEMA, LocalizationChecker, RowPreparer
from geomoe.core.data.records import LOCALIZATION_SCHEMA, RETRIEVAL_SCHEMA, RejectLog, records_to_table
from geomoe.core.data.refine_rules import load_rules
from geomoe.core.data.sources import SourceRecords, read_source

log = logging.getLogger(__name__)
MANIFEST = storage.MANIFEST
# 2: image bytes in the images/ table; 3: an augmented copy's caption_raw is its sanitised source text (what the
# LLM refines). A folder of an older layout is prepared again.
LAYOUT = 3
RECORDS_PER_TASK = 4096  # about 1,400 GeoText images, ~70 MB: one task's image shard


def _refinement(preprocess: PreprocessSpec) -> dict[str, Any] | None:
    """Which refinement the training captions get, with the rules' hash (part of the inputs)."""
    if preprocess.refine == "none":
        return None
    rules = load_rules(preprocess.refine_rules)
    return {"engine": "rules", "rules": preprocess.refine_rules or "builtin:v1", "rules_sha256": rules.sha256}


def _inputs_key(spec: JobSpec, source: SourceRecords) -> str:
    options = spec.preprocess.model_dump(exclude={"force", "rows_per_file"})
    blob = json.dumps(
        {
            "data": spec.data.model_dump(mode="json", exclude={"synthesize"}),
            "options": options,
            "refine": _refinement(spec.preprocess),
            "files": source.files,
            "seed": spec.seed,
            "layout": LAYOUT,
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


LOCALIZATION_CHECKED = pa.schema(
    [
        *LOCALIZATION_SCHEMA,
        pa.field("reference_width", pa.int32()),  # the centre-box baseline's input, read once here
        pa.field("reference_height", pa.int32()),
        pa.field("reject", pa.string()),
    ]
)


def record_slices(table: pa.Table, key: str, concurrency: int) -> list[pa.Table]:
    """Contiguous slices of the records, one task each, cut only where ``key`` (the image) changes. Not
    repartition(): an all-to-all shuffle costs more than the map on small data; and contiguity reads each image
    once (its captions are neighbours) and keeps the task's image shard free of another task's images. At most
    ``RECORDS_PER_TASK`` records a slice (the shard's size), at least 256 (a task's start-up)."""
    n = len(table)
    slices = max(1, min(n // 256, 4 * concurrency), -(-n // RECORDS_PER_TASK))
    keys = table[key].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(keys[1:] != keys[:-1]) + 1  # where a new image starts
    targets = [i * n // slices for i in range(1, slices)]
    cuts = sorted({int(starts[j]) for j in np.searchsorted(starts, targets) if j < len(starts)})
    bounds = [0, *cuts, n]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


def _process(spec: JobSpec, source: SourceRecords, out: str) -> pa.Table:
    """Every record's output rows, checked and prepared by Ray Data tasks in parallel (the per-row work: one read
    of each image, decode checks, caption normalisation, augmented copies; each task writes its images' bytes as
    one shard of ``images/``). What comes back is row metadata (paths and text, a few hundred bytes a row),
    streamed to the driver as Arrow: one execution of the pipeline, where filtering, counting and writing as
    further Dataset operations would each run the executor again."""
    import ray.data

    concurrency = spec.resources.data_concurrency
    images_dir = storage.join(out, image_table.FOLDER)
    if source.kind == "retrieval":
        table, key = records_to_table(source.retrieval, RETRIEVAL_SCHEMA), "image_path"
        preparer = RowPreparer(spec.preprocess, images_dir, spec.seed)
        fn = lambda t: pa.Table.from_pylist(preparer(t.to_pylist()), schema=PREPARED_SCHEMA)  # noqa: E731
    else:
        table, key = records_to_table(source.localization, LOCALIZATION_SCHEMA), "reference_path"
        checker = LocalizationChecker(spec.preprocess.validate_images, images_dir)
        fn = lambda t: pa.Table.from_pylist(checker(t.to_pylist()), schema=LOCALIZATION_CHECKED)  # noqa: E731
    records = ray.data.from_arrow(record_slices(table, key, concurrency))
    # batch_size=None: a task's whole slice is one batch, so one shard
    prepared = records.map_batches(
        fn, batch_format="pyarrow", batch_size=None, compute=ray.data.TaskPoolStrategy(size=concurrency), num_cpus=1
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


def _image_summary(out: str) -> dict[str, Any]:
    """Where the image table is, with its shard count and bytes (one listing)."""
    folder = storage.join(out, image_table.FOLDER)
    listing = [size for rel, size in storage.list_files(folder) if rel.endswith(".parquet")]
    return {"table": folder, "shards": len(listing), "bytes": int(sum(listing))}


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
    from geomoe.on_ray.ray_env import ensure_ray

    out = storage.absolute(spec.preprocess.output_dir)
    rejects = RejectLog(spec.preprocess.on_bad_record)
    started = time.perf_counter()
    source = read_source(spec.data, rejects)
    rejects.refuse_skipped_test_records()
    key = _inputs_key(spec, source)
    existing = finished_manifest(out)
    if existing and existing.get("inputs_key") == key and not spec.preprocess.force:
        log.info("prepare: %s is up to date; nothing to do", out)
        return existing
    ownership.claim_dir(out, ownership.Claim("preprocess.output_dir", spec.name, "prepare"))
    ensure_ray(spec.resources)
    storage.delete(storage.join(out, MANIFEST))  # from here on the folder is unfinished
    for old in (image_table.FOLDER, "augmented"):  # a crashed attempt's shards; layout 1's satellite copies
        storage.delete(storage.join(out, old))
    processed = _process(spec, source, out)
    for row in _partition(processed, False).select(["source", "record", "reject", "split"]).to_pylist():
        rejects.reject(row["source"], row["record"], row["reject"], row["split"])  # raises under on_bad_record=fail
    rejects.refuse_skipped_test_records()
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
        "images": _image_summary(out),
        "input_records": len(source),
        **_counts(good, source.kind),
        "refine": _refinement(spec.preprocess),
        "rejected": {
            "count": len(rejects),
            "by_reason": rejects.reasons(),
            "rows": [r.to_row() for r in rejects.rejects],
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    storage.write_json_atomic(storage.join(out, MANIFEST), manifest)
    return manifest
