"""``refine`` on Ray Data: an LLM rewrites each prepared training caption for its platform (PE-MoE's textual
domain alignment), shard by shard.

Layout: <refine.output_dir>/pairs/<the prepared table's partition path>/<shard>.parquet and manifest.json.
Each training shard is refined by an actor pool holding the engine and written atomically; a shard whose
output exists is not redone, so a killed job resumes where it stopped. Test shards are copied with their
captions unchanged (queries are never rewritten). A generated caption replaces the original only if it passes
``engines.prompts.rejection``; otherwise the original stays and the row is counted by reason. Every row keeps
``original_caption`` and gets ``refine_status`` ("refined", the reason it was kept, or "query").

The LLM rewrites the raw caption (``caption_raw``: cased, punctuated, whole; an augmented satellite copy's without
its directional sentences), not the prepared one, which is lowercased, stripped of punctuation and cut at
preprocess.max_words_train: the paper refines the dataset's captions, and an LLM reads sentences better than a
truncated bag of words. Its output is normalised and cut like every prepared caption.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec, PreprocessSpec, RefineSpec
from geomoe.core.data.transforms import prepare_caption
from geomoe.core.engines.prompts import DEFAULT_REFINE_PROMPTS, RefinePrompts, clean_generation, load_prompts, rejection
from geomoe.on_ray.pipelines.engine_pool import engine_pool_options
from geomoe.on_ray.pipelines.llm import generate

log = logging.getLogger(__name__)
MANIFEST = storage.MANIFEST
# what the LLM is asked about, per row: the raw caption (see the module's docstring), its platform, and whether the
# row is an augmented copy
REFINEMENT_INPUTS = ["caption_raw", "platform", "augment"]


@dataclass(frozen=True)
class Normalisation:
    """How an accepted LLM output is made like a prepared training caption: X-VLM pre_caption, cut at
    ``caption_words`` (preprocess.max_words_train), and split into short statements of at most
    ``statement_words`` (the paper's sentence-level splitting, which the refined rows keep)."""

    caption_words: int
    statement_words: int

    @classmethod
    def of(cls, preprocess: PreprocessSpec) -> Normalisation:
        return cls(preprocess.max_words_train, preprocess.statement_words)


def apply_refinement(batch: pa.Table, generated: list[str | None], refine: RefineSpec, norm: Normalisation) -> pa.Table:
    """Replace each caption (and its statements) by its generated text when that passes the checks; record why not
    otherwise. An accepted text is prepared like every training caption (``Normalisation``), so refined and
    unrefined rows look alike to the model; a kept row keeps its caption and statements from prepare."""
    captions, old_statements = batch["caption"].to_pylist(), batch["statements"].to_pylist()
    new, statements, status = [], [], []
    for i, (text, augment) in enumerate(zip(generated, batch["augment"].to_pylist(), strict=True)):
        text = None if text is None else clean_generation(text)
        reason = rejection(text, captions[i], bool(augment), refine.min_words, refine.max_words)
        prepared = prepare_caption(text, norm.caption_words, norm.statement_words) if text and not reason else None
        reason = reason or ("" if prepared and prepared.caption else "empty after normalisation")
        new.append(captions[i] if reason or prepared is None else prepared.caption)
        statements.append(old_statements[i] if reason or prepared is None else prepared.statements)
        status.append(reason or "refined")
    batch = batch.set_column(batch.schema.get_field_index("caption"), "caption", pa.array(new, pa.string()))
    field = batch.schema.field("statements")
    batch = batch.set_column(batch.schema.get_field_index("statements"), field, pa.array(statements, field.type))
    batch = batch.append_column("original_caption", pa.array(captions, pa.string()))
    return batch.append_column("refine_status", pa.array(status, pa.string()))


class RefineBatch:
    """Ray Data actor for the ``transformers`` engine: rows of a shard -> refined (or kept) captions."""

    def __init__(self, refine: RefineSpec, norm: Normalisation) -> None:
        from geomoe.core.engines.local import TransformersEngine
        from geomoe.on_ray.ray_env import worker_device

        e = refine.engine
        device = worker_device()  # the actor's GPU where the map asked for one (engine.use_gpu)
        self.engine = TransformersEngine(
            e.model, e.max_new_tokens, e.temperature, e.top_p, device=device, batch_size=e.batch_size
        )
        self.to_messages, self.refine = RefineMessages(load_prompts(refine.prompts)), refine
        self.norm = norm

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.select(REFINEMENT_INPUTS).to_pylist()
        generated = self.engine.generate([self.to_messages(item) for item in items])
        return apply_refinement(batch, generated, self.refine, self.norm)


class RefineMessages:
    """An item {caption_raw, platform, augment} -> the refinement chat request (runs in the Ray Data tasks)."""

    def __init__(self, prompts: RefinePrompts) -> None:
        self.prompts = prompts

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        return self.prompts.messages(item["caption_raw"], item["platform"], bool(item["augment"]))


def _read_shard(location: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem_and_path(location)
    return pq.read_table(path, filesystem=fs, columns=columns)


def _write_shard(table: pa.Table, location: str) -> None:
    with storage.atomic_path(location, ".parquet") as tmp:
        pq.write_table(table, tmp)


def _refine_shard(
    source: str, relative: str, target: str, refine: RefineSpec, prompts: RefinePrompts, norm: Normalisation
) -> None:
    import ray.data

    table = _read_shard(source)
    written = set(table.column_names)
    parts = relative.split("/")[:-1]
    from_path = {k: v for k, _, v in (part.partition("=") for part in parts if "=" in part)}
    for name, value in from_path.items():  # hive partition values live in the path, not in the file
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    if refine.engine.kind in ("http", "vllm"):
        generated = generate(refine.engine, table.select(REFINEMENT_INPUTS).to_pylist(), RefineMessages(prompts))
        refined = apply_refinement(table, generated, refine, norm)
    else:
        ds = ray.data.from_arrow(table).map_batches(
            RefineBatch,
            fn_constructor_kwargs={"refine": refine, "norm": norm},
            batch_format="pyarrow",
            **engine_pool_options(refine.engine),
        )
        refined = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow")))
    _write_shard(refined.drop_columns([n for n in from_path if n not in written]), target)


def refine_captions(spec: JobSpec, manifest: dict[str, Any]) -> dict[str, Any]:
    """Refine the training shards of a prepared dataset; returns the refined dataset's manifest (with a report)."""
    assert spec.refine is not None  # checked by JobSpec validation
    refine, prompts = spec.refine, load_prompts(spec.refine.prompts)
    source_root, out = manifest["table"], storage.absolute(refine.output_dir)
    pairs = storage.join(out, "pairs")
    started = time.perf_counter()
    ownership.claim_dir(out, ownership.Claim("refine.output_dir", spec.name, "refine"))
    norm = Normalisation.of(spec.preprocess)
    _forget_other_inputs(out, manifest, refine, prompts.sha256, norm)
    done = redone = 0
    finished = {rel for rel, _ in storage.list_files(pairs)}
    for relative in [rel for rel, _ in storage.list_files(source_root) if rel.endswith(".parquet")]:
        target = storage.join(pairs, relative)
        if "split=train" not in relative.split("/"):  # queries are never rewritten; same columns as train shards
            if relative not in finished:
                table = _read_shard(storage.join(source_root, relative))
                table = table.append_column("original_caption", table["caption"])
                table = table.append_column("refine_status", pa.array(["query"] * table.num_rows, pa.string()))
                _write_shard(table, target)
            continue
        if relative in finished:
            done += 1
            continue
        log.info("refine: %s", relative)
        source = storage.join(source_root, relative)
        _refine_shard(source, relative, target, refine, prompts, norm)
        redone += 1
    report = _report(pairs)
    refined_manifest = {
        **manifest,
        "location": out,
        "table": pairs,
        "refined_from": manifest["table"],
        "refinement": {
            "engine": refine.engine.model_dump(mode="json"),
            "prompts": refine.prompts or DEFAULT_REFINE_PROMPTS,
            "prompts_sha256": prompts.sha256,
            "shards_refined": redone,
            "shards_reused": done,
            **report,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    storage.write_json_atomic(storage.join(out, MANIFEST), refined_manifest)
    return refined_manifest


def _forget_other_inputs(
    out: str, manifest: dict[str, Any], refine: RefineSpec, prompts_sha256: str, norm: Normalisation
) -> None:
    """Finished shards are reused only for the same prepared data, engine settings, prompts and normalisation."""
    settings = refine.model_dump(mode="json", exclude={"output_dir"})
    normalisation = {"pre_caption": True, **asdict(norm), "input": "caption_raw"}
    key = json.dumps([manifest.get("inputs_key"), settings, prompts_sha256, normalisation], sort_keys=True)
    marker = storage.join(out, "inputs.json")
    pairs = storage.join(out, "pairs")
    if storage.exists(pairs) and (not storage.is_file(marker) or storage.read_text(marker) != key):
        log.info("refine: %s holds refinements of other inputs; starting over", out)
        storage.delete(storage.join(out, MANIFEST))
        storage.delete(pairs)
    storage.write_text_atomic(marker, key)


def _report(pairs: str) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    for relative, _ in storage.list_files(pairs):
        if relative.endswith(".parquet") and "split=train" in relative.split("/"):
            shard = _read_shard(storage.join(pairs, relative), columns=["refine_status"])
            statuses.update(shard["refine_status"].to_pylist())
    refined = statuses.pop("refined", 0)
    return {
        "rows_refined": refined,
        "rows_kept": sum(statuses.values()),
        "kept_by_reason": dict(sorted(statuses.items())),
    }
