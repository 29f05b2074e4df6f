"""The first stage on Ray Serve: the query encoder (PE-MoE's text side and gate, ``@serve.batch``) and the exact
fused search over the index held in memory (on the GPU where the replica has one), with an optional platform
filter; both `@serve.batch`: a batch of queries shares one forward pass and one scan of the gallery."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from geomoe.config.pe_moe import PEMoEModelSpec
from ray import serve

SearchCall = tuple[np.ndarray, int, list[str] | None]  # (query vector, k, platforms or None)


def configure_batching(method: Any, batching: dict[str, Any] | None) -> None:
    """Apply the application's ``batching`` (geomoe.config.serve.BatchingSpec) to a ``@serve.batch`` method."""
    if batching:
        method.set_max_batch_size(batching["max_batch_size"])
        method.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class QueryEncoder:
    def __init__(self, checkpoint: str, batching: dict[str, Any] | None = None) -> None:
        from geomoe.models.factory import load_pe_moe
        from geomoe.ray_env import worker_device

        configure_batching(self.encode, batching)
        model, self.tokenizer, spec, _ = load_pe_moe(checkpoint)
        self.model = model.to(worker_device())
        self.max_length = spec.model_as(PEMoEModelSpec).text.max_length
        self.max_words = spec.preprocess.max_words_test  # queries are normalised as the test queries were
        self.experts = [e.name for e in spec.model_as(PEMoEModelSpec).experts]
        self.warm = False

    async def ready(self) -> bool:
        """Answers once the replica is built and has encoded a query (the first pass is the slow one)."""
        if not self.warm:
            await asyncio.to_thread(self.encode_now, ["ready"])  # a forward pass: not on the replica's event loop
            self.warm = True
        return True

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode(self, queries: list[str]) -> list[dict[str, Any]]:
        return self.encode_now(queries)

    async def encode_unbatched(self, query: str) -> dict[str, Any]:
        """One query per forward pass (``bench serve``'s comparison against ``@serve.batch``)."""
        return self.encode_now([query])[0]

    def encode_now(self, queries: list[str]) -> list[dict[str, Any]]:
        from geomoe.data.transforms import normalize_caption
        from geomoe.retrieval.embed import embed_texts
        from geomoe.retrieval.index import query_rows

        texts = [normalize_caption(query, self.max_words) for query in queries]
        t_KQD, g_QK = embed_texts(self.model, self.tokenizer, texts, self.max_length)
        vectors = query_rows(t_KQD, g_QK)
        return [{"vector": vectors[i], "gate": dict(zip(self.experts, g_QK[i].tolist(), strict=True))}
                for i in range(len(queries))]  # fmt: skip


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class GallerySearch:
    def __init__(self, index: str, batching: dict[str, Any] | None = None) -> None:
        from geomoe.ray_env import worker_device
        from geomoe.retrieval.index import read_index

        configure_batching(self.search, batching)
        self.index = read_index(index, mmap=False).on(worker_device())  # on a GPU replica: in its memory
        self.platforms = np.array(self.index.manifest.platforms)
        self.row_of = {image_id: n for n, image_id in enumerate(self.index.ids)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def search(self, calls: list[SearchCall]) -> list[list[dict[str, Any]]]:
        return self.search_now(calls)

    async def search_unbatched(self, call: SearchCall) -> list[dict[str, Any]]:
        """One scan of the gallery per query (``bench serve``'s comparison against ``@serve.batch``)."""
        return self.search_now([call])[0]

    def search_now(self, calls: list[SearchCall]) -> list[list[dict[str, Any]]]:
        """Queries with the same platform filter share one scan of the rows (a scan costs about the same for 1
        query or 32: it is memory-bound)."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (_, _, platforms) in enumerate(calls):
            groups.setdefault(tuple(sorted(platforms or ())), []).append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in calls]
        for wanted, members in groups.items():
            allowed = None
            if wanted and len(self.platforms) == len(self.index.ids):
                allowed = np.isin(self.platforms, wanted)
            vectors = np.stack([calls[i][0] for i in members])
            found = self.index.search(vectors, max(calls[i][1] for i in members), allowed)
            for i, hits in zip(members, found, strict=True):
                out[i] = [self._hit(image_id, score) for image_id, score in hits[: calls[i][1]]]
        return out

    def _hit(self, image_id: str, score: float) -> dict[str, Any]:
        platform = self.index.manifest.platform_of(self.row_of[image_id])
        return {"image_id": image_id, "score": score, "platform": platform}

    async def ready(self) -> bool:
        return True  # the index is loaded in __init__

    def info(self) -> dict[str, Any]:
        keep = ("checkpoint", "checkpoint_sha256", "gallery_sha256", "split", "experts", "count", "dim", "dtype")
        return self.index.manifest.model_dump(include=set(keep))
