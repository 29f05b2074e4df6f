"""PE-MoE on Ray Serve: the query encoder (the text side and gate, ``@serve.batch``), the exact fused search over
the index held in memory (on the GPU where the replica has one, with an optional platform filter; a batch of
queries shares one forward pass and one scan of the gallery), and CGRS's re-ranker (the offline evaluator's scoring
on one query's candidates; captions the store lacks come from the shared ``Captioner`` deployment)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from geomoe.families.pe_moe.spec import PEMoEModelSpec
from ray import serve

SearchCall = tuple[np.ndarray, int, list[str] | None]  # (query vector, k, platforms or None)


def configure_batching(method: Any, batching: dict[str, Any] | None) -> None:
    """Apply the application's ``batching`` (geomoe.core.config.serve.BatchingSpec) to a ``@serve.batch`` method."""
    if batching:
        method.set_max_batch_size(batching["max_batch_size"])
        method.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class QueryEncoder:
    def __init__(self, checkpoint: str, batching: dict[str, Any] | None = None) -> None:
        from geomoe.families.pe_moe.factory import load_pe_moe
        from geomoe.on_ray.ray_env import worker_device

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
        from geomoe.core.data.transforms import normalize_caption
        from geomoe.families.pe_moe.encode import embed_texts
        from geomoe.families.pe_moe.index import query_rows

        texts = [normalize_caption(query, self.max_words) for query in queries]
        t_KQD, g_QK = embed_texts(self.model, self.tokenizer, texts, self.max_length)
        vectors = query_rows(t_KQD, g_QK)
        return [{"vector": vectors[i], "gate": dict(zip(self.experts, g_QK[i].tolist(), strict=True))}
                for i in range(len(queries))]  # fmt: skip


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class GallerySearch:
    def __init__(self, index: str, batching: dict[str, Any] | None = None) -> None:
        from geomoe.families.pe_moe.index import read_index
        from geomoe.on_ray.ray_env import worker_device

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


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Reranker:
    """CGRS online: the offline re-ranker's scoring (``caption_evidence`` + ``fuse_top_n``) on one query's
    candidates, with the caption store restricted to the index's images (so the lexical IDF is the offline one)."""

    def __init__(self, checkpoint: str, index: str, rerank: dict[str, Any], captioner: Any | None) -> None:
        from geomoe.core.config import RerankSpec
        from geomoe.core.data.caption_store import read_caption_store
        from geomoe.core.retrieval.rerank import LexicalScorer
        from geomoe.families.pe_moe.factory import load_pe_moe
        from geomoe.families.pe_moe.index import read_index
        from geomoe.on_ray.ray_env import worker_device

        self.spec = RerankSpec.model_validate(rerank)
        model, self.tokenizer, trained, _ = load_pe_moe(checkpoint)
        self.model = model.to(worker_device())  # the captions' dense text embeddings
        self.max_length = trained.model_as(PEMoEModelSpec).text.max_length
        gallery = read_index(index)
        ids = [str(i) for i in gallery.ids]
        store = read_caption_store(self.spec.captions)
        self.stored = {image_id: store[image_id] for image_id in ids if image_id in store}
        self.lexical = LexicalScorer([c for image_id in ids for c in self.stored.get(image_id, [])])
        self.path_of = dict(zip(ids, gallery.manifest.image_paths, strict=False))
        self.captioner = captioner
        self.generated: dict[str, str] = {}
        self.failed_captions = 0
        self.embedded: dict[str, np.ndarray] = {}

    async def ready(self) -> bool:
        return True  # the caption store and the text model are loaded in __init__

    async def rerank(self, query: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``candidates`` in first-stage order -> the top ``top_n`` re-ordered (each with the captions used and
        its caption score), the rest unchanged."""
        from geomoe.core.retrieval.rerank import caption_evidence, fuse_top_n

        top = candidates[: self.spec.top_n]
        await self._caption_missing(top)
        captions_T = [self.stored.get(c["image_id"]) or self._generated(c["image_id"]) for c in top]
        captions = [text for caps in captions_T for text in caps]
        first_caption = np.cumsum([0] + [len(caps) for caps in captions_T])
        slots_1T = np.arange(len(top))[None, :]
        evidence_1T = caption_evidence(
            [query], slots_1T, first_caption, captions,
            self.spec.dense_weight, self.spec.lexical_weight, self._embed, self.lexical,
        )  # fmt: skip
        first_1T = np.array([[c["score"] for c in top]])
        fused_T = fuse_top_n(first_1T, evidence_1T, slots_1T, self.spec.weight, self.spec.normalise)[0]
        order = np.argsort(-fused_T, kind="stable")
        reranked = [top[t] | {"captions": captions_T[t], "caption_score": float(evidence_1T[0, t])} for t in order]
        return reranked + candidates[len(top) :]

    def info(self) -> dict[str, Any]:
        return {
            "captions": self.spec.captions,
            "top_n": self.spec.top_n,
            "images_in_store": len(self.stored),
            "captions_generated": len(self.generated),
            "captions_failed": self.failed_captions,
        }

    def _generated(self, image_id: str) -> list[str]:
        return [self.generated[image_id]] if image_id in self.generated else []

    async def _caption_missing(self, top: list[dict[str, Any]]) -> None:
        """Ask the captioner for every candidate without a caption (once: the answer is cached)."""
        missing = [c for c in top if c["image_id"] not in self.stored and c["image_id"] not in self.generated]
        missing = [c for c in missing if c["image_id"] in self.path_of]
        if self.captioner is None or not missing:
            return
        texts = await asyncio.gather(
            *(self.captioner.caption.remote((self.path_of[c["image_id"]], c["platform"] or "")) for c in missing)
        )
        for candidate, text in zip(missing, texts, strict=True):
            if text is None:
                self.failed_captions += 1  # no evidence for it now; asked again next time
            else:
                self.generated[candidate["image_id"]] = text
                self.lexical.add([text])  # the IDF of the store plus this caption, as offline with it stored

    def _embed(self, texts: list[str]) -> np.ndarray:
        from geomoe.families.pe_moe.encode import embed_dense_texts

        new = list(dict.fromkeys(t for t in texts if t not in self.embedded))
        if new:
            if len(self.embedded) > 100_000:  # a bound on memory; captions are re-embedded after it
                self.embedded.clear()
            vectors = embed_dense_texts(self.model, self.tokenizer, new, self.max_length)
            self.embedded.update(zip(new, vectors, strict=True))
        return np.stack([self.embedded[t] for t in texts])
