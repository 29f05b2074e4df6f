"""``refine`` on Ray Data: an LLM rewrites each prepared training caption for its platform (PE-MoE's textual
domain alignment), shard by shard.

Layout: <refine.output_dir>/pairs/<the prepared table's partition path>/<shard>.parquet and manifest.json.
Each training shard is refined by an actor pool holding the engine and written atomically; a shard whose
output exists is not redone, so a killed job resumes where it stopped. Test shards are copied with their
captions unchanged (queries are never rewritten). A generated caption replaces the original only if it passes
``engines.prompts.rejection``; otherwise the original stays and the row is counted by reason. Every row keeps
``original_caption`` and gets ``refine_status`` ("refined", the reason it was kept, or "query").
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
import pyarrow.parquet as pq

from geomoe.config import JobSpec, RefineSpec
from geomoe.engines.prompts import clean_generation, load_prompts, rejection
from geomoe.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class RefineBatch:
    """Ray Data actor: rows of one shard -> their refined captions (or the originals) and a status each."""

    def __init__(self, refine: RefineSpec) -> None:
        from geomoe.engines.local import TransformersEngine

        e = refine.engine
        device = "cuda" if e.use_gpu else "cpu"
        self.engine = TransformersEngine(
            e.model, e.max_new_tokens, e.temperature, e.top_p, device=device, batch_size=e.batch_size
        )
        self.prompts, self.refine = load_prompts(refine.prompts), refine

    def __call__(self, batch: pa.Table) -> pa.Table:
        captions = batch["caption"].to_pylist()
        platforms, augments = batch["platform"].to_pylist(), batch["augment"].to_pylist()
        requests = [self.prompts.messages(c, p) for c, p in zip(captions, platforms, strict=True)]
        generated = self.engine.generate(requests)
        new, status = [], []
        for original, text, augment in zip(captions, generated, augments, strict=True):
            text = None if text is None else clean_generation(text)
            reason = rejection(text, original, bool(augment), self.refine.min_words, self.refine.max_words)
            new.append(original if reason else text)
            status.append(reason or "refined")
        index = batch.schema.get_field_index("caption")
        batch = batch.set_column(index, "caption", pa.array(new, pa.string()))
        # a refined caption is already a short statement; a kept one keeps its statements from prepare
        statements = [
            s if why != "refined" else [c]
            for s, c, why in zip(batch["statements"].to_pylist(), new, status, strict=True)
        ]
        index = batch.schema.get_field_index("statements")
        batch = batch.set_column(index, "statements", pa.array(statements, batch.schema.field("statements").type))
        return batch.append_column("original_caption", pa.array(captions, pa.string())).append_column(
            "refine_status", pa.array(status, pa.string())
        )


def _refine_shard(source: Path, target: Path, refine: RefineSpec) -> None:
    import ray.data

    table = pq.read_table(source)
    from_path = {k: v for k, _, v in (part.partition("=") for part in source.parent.parts if "=" in part)}
    for name, value in from_path.items():  # hive partition values live in the path, not in the file
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    ds = ray.data.from_arrow(table).map_batches(
        RefineBatch,
        fn_constructor_kwargs={"refine": refine},
        batch_size=refine.engine.batch_size * 4,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=refine.engine.concurrency),
        num_cpus=0 if refine.engine.use_gpu else 1,
        num_gpus=1 if refine.engine.use_gpu else 0,
    )
    refined = pa.concat_tables(
        [pa.Table.from_pandas(b, preserve_index=False) for b in ds.iter_batches(batch_format="pandas")]
    )
    with atomic_path(target) as tmp:
        pq.write_table(refined, tmp)


def refine_captions(spec: JobSpec, manifest: dict[str, Any]) -> dict[str, Any]:
    """Refine the training shards of a prepared dataset; returns the refined dataset's manifest (with a report)."""
    assert spec.refine is not None  # checked by JobSpec validation
    if spec.refine.engine.kind != "transformers":
        raise NotImplementedError(f"refine.engine.kind {spec.refine.engine.kind!r} is not wired in yet (issue 5)")
    refine, prompts = spec.refine, load_prompts(spec.refine.prompts)
    source_root, out = Path(manifest["table"]), Path(refine.output_dir)
    started = time.perf_counter()
    _forget_other_inputs(out, manifest, refine, prompts.sha256)
    done = redone = 0
    for shard in sorted(source_root.rglob("*.parquet")):
        relative = shard.relative_to(source_root)
        target = out / "pairs" / relative
        if "split=train" not in relative.parts:  # queries are never rewritten; same columns as the train shards
            if not target.exists():
                table = pq.read_table(source_root / relative)
                table = table.append_column("original_caption", table["caption"])
                table = table.append_column("refine_status", pa.array(["query"] * table.num_rows, pa.string()))
                with atomic_path(target) as tmp:
                    pq.write_table(table, tmp)
            continue
        if target.exists():
            done += 1
            continue
        log.info("refine: %s", relative)
        _refine_shard(shard, target, refine)
        redone += 1
    report = _report(out / "pairs")
    refined_manifest = {
        **manifest,
        "table": str((out / "pairs").resolve()),
        "refined_from": manifest["table"],
        "refinement": {
            "engine": refine.engine.model_dump(mode="json"),
            "prompts": refine.prompts or "builtin:refine_v1",
            "prompts_sha256": prompts.sha256,
            "shards_refined": redone,
            "shards_reused": done,
            **report,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    write_json_atomic(out / MANIFEST, refined_manifest)
    return refined_manifest


def _forget_other_inputs(out: Path, manifest: dict[str, Any], refine: RefineSpec, prompts_sha256: str) -> None:
    """Finished shards are reused only for the same prepared data, engine settings and prompts."""
    key = json.dumps(
        [manifest.get("inputs_key"), refine.model_dump(mode="json", exclude={"output_dir"}), prompts_sha256],
        sort_keys=True,
    )
    marker = out / "inputs.json"
    if out.exists() and (not marker.is_file() or marker.read_text() != key):
        log.info("refine: %s holds refinements of other inputs; starting over", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, key)


def _report(pairs: Path) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    for shard in pairs.rglob("*.parquet"):
        if "split=train" in shard.parts:
            statuses.update(pq.read_table(shard, columns=["refine_status"])["refine_status"].to_pylist())
    refined = statuses.pop("refined", 0)
    return {
        "rows_refined": refined,
        "rows_kept": sum(statuses.values()),
        "kept_by_reason": dict(sorted(statuses.items())),
    }
