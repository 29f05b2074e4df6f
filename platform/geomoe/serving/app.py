"""The gated retriever on Ray Serve: composed deployments behind a FastAPI ingress.

- ``QueryEncoder``: text trunk + expert tails + gate of a PE-MoE checkpoint; ``@serve.batch`` groups concurrent
  queries into one forward pass. Returns the query vector [g_1 t_1, ..., g_K t_K] and the gate weights.
- ``GallerySearch``: the index folder (geomoe.retrieval.index) in memory; exact fused search with an optional
  platform filter.
- ``Ingress``: ``POST /search``, ``GET /healthz``, ``GET /info``; request validation with clear 4xx errors,
  limits on query length and k, an optional bearer token.

Build with ``build_app({"checkpoint": ..., "index": ..., "token": ...})`` (also the ``import_path`` builder for
Serve config files). Re-ranking, localisation and autoscaling configs: issue 7, next.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request model's class, not a string, in a
# Serve ingress method's signature, or it reads the body parameter as a query parameter.
import hmac
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from geomoe.data.records import Platform
from ray import serve

MAX_QUERY_CHARS = 1000
MAX_K = 100
api = FastAPI(title="geomoe retriever")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    platforms: list[Platform] | None = Field(None, min_length=1, description="only images of these platforms")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class QueryEncoder:
    def __init__(self, checkpoint: str) -> None:
        from geomoe.models.checkpoint import load_pe_moe

        self.model, self.tokenizer, spec, _ = load_pe_moe(checkpoint)
        self.max_length = spec.pe_moe.text.max_length
        self.experts = [e.name for e in spec.pe_moe.experts]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode(self, queries: list[str]) -> list[dict[str, Any]]:
        from geomoe.retrieval.embed import embed_texts
        from geomoe.retrieval.index import query_rows

        t_KQD, g_QK = embed_texts(self.model, self.tokenizer, queries, self.max_length)
        vectors = query_rows(t_KQD, g_QK)
        return [{"vector": vectors[i], "gate": dict(zip(self.experts, g_QK[i].tolist(), strict=True))}
                for i in range(len(queries))]  # fmt: skip


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class GallerySearch:
    def __init__(self, index: str) -> None:
        from geomoe.retrieval.index import read_index

        self.index = read_index(index, mmap=False)
        self.platforms = np.array(self.index.manifest.get("platforms", []))
        self.row_of = {image_id: n for n, image_id in enumerate(self.index.ids)}

    def search(self, vector: np.ndarray, k: int, platforms: list[str] | None) -> list[dict[str, Any]]:
        allowed = None
        if platforms and len(self.platforms) == len(self.index.ids):
            allowed = np.isin(self.platforms, platforms)
        hits = self.index.search(vector[None, :], k, allowed)[0]
        return [
            {"image_id": image_id, "score": score, "platform": _platform_of(self.platforms, self.row_of[image_id])}
            for image_id, score in hits
        ]

    def info(self) -> dict[str, Any]:
        keep = ("checkpoint", "checkpoint_sha256", "gallery_sha256", "split", "experts", "count", "dim", "dtype")
        return {k: self.index.manifest.get(k) for k in keep}


def _platform_of(platforms: np.ndarray, row: int) -> str | None:
    return str(platforms[row]) if row < len(platforms) else None


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, encoder: Any, search: Any, token: str | None = None) -> None:
        self.encoder, self.gallery, self.token = encoder, search, token

    def _authorise(self, authorization: str | None) -> None:
        if self.token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/info")
    async def info(self, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._authorise(authorization)
        import torch

        import geomoe
        import ray

        index = await self.gallery.info.remote()
        return {
            "index": index,
            "versions": {"geomoe": geomoe.__version__, "ray": ray.__version__, "torch": torch.__version__},
        }

    @api.post("/search")
    async def search(self, request: SearchRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._authorise(authorization)
        encoded = await self.encoder.encode.remote(request.query)
        platforms = [p.value for p in request.platforms] if request.platforms else None
        results = await self.gallery.search.remote(encoded["vector"], request.k, platforms)
        return {"query": request.query, "results": results, "expert_weights": encoded["gate"]}


def build_app(args: dict[str, Any]) -> Any:
    """The application from ``{"checkpoint", "index", "token" (optional)}``."""
    missing = [k for k in ("checkpoint", "index") if not args.get(k)]
    if missing:
        raise ValueError(f"the retriever app needs {missing}")
    encoder = QueryEncoder.bind(args["checkpoint"])  # type: ignore[attr-defined]
    gallery = GallerySearch.bind(args["index"])  # type: ignore[attr-defined]
    return Ingress.bind(encoder, gallery, args.get("token"))  # type: ignore[attr-defined]
