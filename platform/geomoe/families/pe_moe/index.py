"""The gallery index of a PE-MoE checkpoint: one matrix whose row n concatenates image n's per-expert normalised
embeddings [v_1n, ..., v_Kn], so PE-MoE's fused score S(q, n) = sum_k g_k(q) cos(t_k(q), v_kn) (Eq. 1) is ONE
inner product between the query vector [g_1 t_1, ..., g_K t_K] and the row (core, no Ray).

Exact search (geomoe.core.retrieval.search) reads the rows as stored (float16, bfloat16 or float32) at memory bandwidth
with a running top-k; FAISS searches the same rows (flat: exact; IVF or HNSW: approximate) with inner product.
An index folder holds the matrix (``vectors.npy``), the image ids (``ids.json``), optional FAISS files and
``manifest.json`` (checkpoint and gallery hashes, counts, layout), written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geomoe.core import ownership, storage
from geomoe.core.cache import cached_copy
from geomoe.core.errors import DatasetError
from geomoe.core.retrieval.search import device_rows, exact_search, largest_row_norm, np_bfloat16
from geomoe.families.pe_moe.model import gallery_rows, gated_queries

__all__ = ["exact_search", "index_rows", "query_rows", "read_index", "write_index"]

Storage = Literal["float16", "bfloat16", "float32"]
MANIFEST = "manifest.json"


def storage_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a storage name (bfloat16 is ml_dtypes')."""
    return np.dtype(np_bfloat16) if name == "bfloat16" else np.dtype(name)


def index_rows(v_KND: np.ndarray, dtype: Storage = "float16") -> np.ndarray:
    """(N, K*D) gallery rows (geomoe.families.pe_moe.model.gallery_rows), stored as ``dtype``."""
    return np.ascontiguousarray(gallery_rows(v_KND), dtype=storage_dtype(dtype))


def query_rows(t_KQD: np.ndarray, g_QK: np.ndarray) -> np.ndarray:
    """(Q, K*D) float32 gated queries (``model.gated_queries``): inner product with a row is Eq. 1."""
    return np.ascontiguousarray(gated_queries(t_KQD, g_QK), dtype=np.float32)


def per_expert_search(
    v_KND: np.ndarray, t_KQD: np.ndarray, g_QK: np.ndarray, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """The naive way, for the benchmark and the tests: K passes over per-expert matrices, each adding a full
    query x gallery similarity matrix into the fused scores with the gate, then the top k (ties: lower index)."""
    n = v_KND.shape[1]
    scores = np.zeros((t_KQD.shape[1], n), np.float32)
    for e in range(v_KND.shape[0]):
        for start in range(0, n, chunk):
            block = v_KND[e, start : start + chunk].astype(np.float32, copy=False)
            scores[:, start : start + len(block)] += g_QK[:, e : e + 1] * (t_KQD[e] @ block.T)
    k = min(k, n)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def build_faiss(rows_ND: np.ndarray, kind: Literal["flat", "ivf", "hnsw"], nlist: int = 1024, m: int = 32) -> Any:
    """A FAISS inner-product index over the rows (float32 inside FAISS)."""
    import faiss

    data = np.ascontiguousarray(rows_ND, dtype=np.float32)
    d = data.shape[1]
    if kind == "flat":
        index: Any = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = max(1, min(nlist, len(data) // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data)
    else:
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    index.add(data)
    return index


def recall_at(found_QK: np.ndarray, exact_QK: np.ndarray) -> float:
    """Fraction of the exact top-k that an approximate search found (recall@k against exact)."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found_QK, exact_QK, strict=True))
    return hits / exact_QK.size


class IndexManifest(BaseModel):
    """An index folder's ``manifest.json``: what the matrix holds and what it was built from. Unknown keys are
    kept (a newer writer's), never an error."""

    model_config = ConfigDict(extra="allow", frozen=True)

    count: int
    dim: int
    dtype: str
    checkpoint: str
    checkpoint_sha256: str = ""
    gallery_sha256: str = ""
    split: str = "test"
    experts: list[str] = Field(default_factory=list)
    expert_dim: int = 0
    platforms: list[str] = Field(default_factory=list, description="per row, the image's platform")
    image_paths: list[str] = Field(default_factory=list, description="per row, what a re-ranker's captioner reads")
    files: dict[str, str] = Field(default_factory=dict, description="file -> sha256, for verified caches")
    row_norm_max: float = Field(0.0, description="the rows' largest norm (the exact search's error bound); 0: unknown")

    def platform_of(self, row: int) -> str | None:
        return self.platforms[row] if row < len(self.platforms) else None


@dataclass(frozen=True)
class GalleryIndex:
    rows: np.ndarray | torch.Tensor  # (N, K*D), numpy (memory-mapped or in memory) or resident on a device
    ids: list[str]
    manifest: IndexManifest

    def on(self, device: str) -> GalleryIndex:
        """The same index with its rows resident on ``device`` (a serving replica on a GPU searches there)."""
        return self if device == "cpu" else GalleryIndex(device_rows(self.rows, device), self.ids, self.manifest)

    @cached_property
    def row_norm_max(self) -> float:
        """From the manifest; an index written before it was recorded pays one pass over the rows, once."""
        return self.manifest.row_norm_max or largest_row_norm(self.rows)

    def search(
        self, queries_QD: np.ndarray, k: int, allowed_N: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per query, the best ``k`` (image id, fused score), best first; rows outside ``allowed_N`` never.
        A batch of queries reads the rows once (memory-bound: 32 queries cost little more than 1)."""
        scores, rows = exact_search(self.rows, queries_QD, k, allowed_N=allowed_N, row_norm_max=self.row_norm_max)
        return [
            [(self.ids[r], float(s)) for r, s in zip(rr, ss, strict=True) if np.isfinite(s)]
            for rr, ss in zip(rows, scores, strict=True)
        ]


def write_index(
    folder: str | Path,
    rows_ND: np.ndarray,
    ids: Sequence[str],
    manifest: dict[str, Any],
    faiss_indexes: dict[str, Any] | None = None,
    claim: ownership.Claim | None = None,
) -> str | Path:
    """Write the matrix, ids, FAISS indexes (``faiss_<kind>.index``) and the manifest (plus counts and layout)
    into ``folder`` atomically; ``folder`` may be absent, empty or geomoe's own output (``claim``)."""
    import faiss

    if len(ids) != rows_ND.shape[0]:
        raise ValueError(f"{len(ids)} ids for {rows_ND.shape[0]} rows")
    dtype = str(rows_ND.dtype)
    full = {**manifest, "count": int(rows_ND.shape[0]), "dim": int(rows_ND.shape[1]), "dtype": dtype}
    full["row_norm_max"] = largest_row_norm(rows_ND) if len(rows_ND) else 0.0
    with ownership.atomic_dir(
        folder, claim or ownership.Claim("index.output_dir", stage="index")
    ) as tmp:  # local or a URI: published with the manifest last
        # .npy has no bfloat16: its bits are saved as uint16 and the manifest's dtype says how to read them
        np.save(tmp / "vectors.npy", rows_ND.view(np.uint16) if dtype == "bfloat16" else rows_ND)
        for kind, index in (faiss_indexes or {}).items():
            faiss.write_index(index, str(tmp / f"faiss_{kind}.index"))
        (tmp / "ids.json").write_text(json.dumps(list(ids)))
        full["files"] = storage.files_sha256(tmp)  # what a serving replica verifies its cached copy against
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
    return folder


def read_index(folder: str | Path, mmap: bool = True) -> GalleryIndex:
    """Load an index folder, a path or URI (a remote one through a verified local cache, so the matrix can be
    memory-mapped); a missing or inconsistent part is a DatasetError naming the file."""
    if not storage.is_file(storage.join(folder, MANIFEST)):
        shown = storage.redact(storage.join(folder, MANIFEST))
        raise DatasetError(f"{shown}: index manifest not found (build the index first)")
    folder = cached_copy(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = IndexManifest.model_validate_json(manifest_path.read_text())
    except ValidationError as err:
        raise DatasetError(f"{manifest_path}: not an index manifest: {err.errors()[0]['msg']}") from err
    rows = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    if manifest.dtype == "bfloat16":
        rows = rows.view(storage_dtype("bfloat16"))
    ids = json.loads((folder / "ids.json").read_text())
    if rows.shape != (manifest.count, manifest.dim) or len(ids) != manifest.count:
        raise DatasetError(f"{folder}: vectors {rows.shape} / {len(ids)} ids disagree with the manifest")
    return GalleryIndex(rows, ids, manifest)
