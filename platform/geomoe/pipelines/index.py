"""``index`` stage: embed a gallery with every expert of a PE-MoE checkpoint on Ray Data (batch inference) into
one matrix of concatenated expert blocks, plus FAISS indexes, for serving (geomoe.retrieval.index).

The manifest records the checkpoint's and the gallery's content hashes, counts and layout; each FAISS index's
recall@10 against exact search is measured on the split's own caption queries and reported.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from geomoe import ownership, storage
from geomoe.config import IndexSpec, JobSpec
from geomoe.config.pe_moe import PEMoEModelSpec
from geomoe.data.prepared import PreparedDataset
from geomoe.errors import DatasetError
from geomoe.retrieval.index import (
    build_faiss,
    exact_search,
    index_rows,
    query_rows,
    recall_at,
    write_index,
)


def checkpoint_sha256(directory: str) -> str:
    """Content hash of a checkpoint folder, a path or URI (every file's bytes, in path order)."""
    digest = hashlib.sha256()
    for rel, _ in storage.list_files(directory):
        digest.update(f"{rel}\0{storage.file_sha256(storage.join(directory, rel))}\n".encode())
    return digest.hexdigest()


def build_index(spec: JobSpec, manifest: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """Embed the gallery of ``spec.index.split`` and write the index folder; return its manifest."""
    from geomoe.pipelines.caption import gallery_images
    from geomoe.pipelines.embed import embedded_images, on_model_device
    from geomoe.pipelines.images import PreparedImages

    assert spec.index is not None  # checked by JobSpec validation
    cfg, started = spec.index, time.perf_counter()
    images = sorted(gallery_images(manifest, cfg.split), key=lambda im: im["image_id"])
    if not images:
        raise DatasetError(f"no {cfg.split} images in the prepared dataset at {manifest['table']}")
    gallery_key = json.dumps([[im["image_id"], im["image_path"]] for im in images])
    checkpoint_sha = checkpoint_sha256(checkpoint)
    inputs_key = hashlib.sha256(
        json.dumps([checkpoint_sha, gallery_key, cfg.model_dump(mode="json")]).encode()
    ).hexdigest()
    claim = ownership.Claim("index.output_dir", spec.name, "index")
    ownership.check_dir(cfg.output_dir, claim)  # before the gallery is embedded
    saved = _saved_report(cfg.output_dir, inputs_key)
    if saved is not None:
        return saved  # the same checkpoint, gallery and settings: embedding again would write the same index
    fetch = PreparedImages(PreparedDataset.of(manifest)).fetch
    loaded, v_KND = embedded_images(spec, checkpoint, [im["image_path"] for im in images], fetch)
    rows = index_rows(v_KND, cfg.dtype)
    queries = _queries(manifest, cfg.split)
    t_KQD, g_QK, experts = on_model_device(spec, checkpoint, loaded, _embedded_queries, queries)
    faiss_info, faiss_indexes = _faiss_files(rows, query_rows(t_KQD, g_QK), cfg)
    info = {
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha,
        "gallery_sha256": hashlib.sha256(gallery_key.encode()).hexdigest(),
        "split": cfg.split,
        "experts": experts,
        "expert_dim": int(v_KND.shape[2]),
        "platforms": [im["platform"] for im in images],
        "image_paths": [im["image_path"] for im in images],  # what a re-ranker's captioner reads
        "faiss": faiss_info,
        "seconds": round(time.perf_counter() - started, 2),
        "queries": len(queries),
        "inputs_key": inputs_key,
    }
    write_index(cfg.output_dir, rows, [im["image_id"] for im in images], info, faiss_indexes, claim)
    saved = _saved_report(cfg.output_dir, inputs_key)
    assert saved is not None  # just written
    return saved


def _saved_report(folder: str, inputs_key: str) -> dict[str, Any] | None:
    """The report of the index in ``folder`` when it was built from the same inputs, else None."""
    try:
        manifest = storage.read_json_if_exists(storage.join(folder, storage.MANIFEST))
    except (storage.StorageError, ValueError):
        return None
    if manifest is None:
        return None
    if manifest.get("inputs_key") != inputs_key:
        return None
    return {k: v for k, v in manifest.items() if k not in ("platforms", "image_paths", "inputs_key", "files")}


def _queries(manifest: dict[str, Any], split: str) -> list[str]:
    import pyarrow.compute as pc

    table = PreparedDataset.of(manifest).read_split(split, columns=["caption"], where=pc.field("augment") == "")
    return [str(c) for c in table["caption"].to_pylist()]


def _faiss_files(
    rows: np.ndarray, queries: np.ndarray, cfg: IndexSpec, k: int = 10
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, indexes): each requested FAISS index and its recall@k against exact search on ``queries``."""
    _, exact = exact_search(rows, queries, k)
    out: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for kind in cfg.faiss:
        index = build_faiss(rows, kind, nlist=cfg.ivf_nlist, m=cfg.hnsw_m)
        if kind == "ivf":
            index.nprobe = cfg.ivf_nprobe
        _, found = index.search(np.ascontiguousarray(queries, np.float32), min(k, len(rows)))
        out[kind] = {"file": f"faiss_{kind}.index", f"recall@{k}_vs_exact": round(recall_at(found, exact), 4)}
        indexes[kind] = index
    return out, indexes


def _embedded_queries(
    model: Any, tokenizer: Any, trained: JobSpec, queries: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(t_KQD, g_QK) of the index's queries (FAISS's training and recall checks use them) and the checkpoint's
    expert names."""
    from geomoe.retrieval.embed import embed_texts

    model_spec = trained.model_as(PEMoEModelSpec)
    t_KQD, g_QK = embed_texts(model, tokenizer, queries, model_spec.text.max_length)
    return t_KQD, g_QK, [e.name for e in model_spec.experts]
