"""CGRS on Ray Serve: the re-ranker (the offline evaluator's scoring on one query's candidates) and the VLM
captioner for gallery images the caption store lacks (local transformers, or an OpenAI-compatible URL)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from geomoe.config import ServeCaptionerSpec
from geomoe.config.pe_moe import PEMoEModelSpec
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Captioner:
    """Captions of gallery images for the re-ranker: the caption stage's prompt, cleaning and rejection rules."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from geomoe.engines.prompts import load_caption_prompt

        self.spec = ServeCaptionerSpec.model_validate(spec)
        self.prompt = load_caption_prompt(self.spec.prompts)
        self.prompt.check_labels_allowed(self.spec.platform_labels, "captioner.prompts")
        engine = self.spec.engine
        if engine.kind == "transformers":
            from geomoe.engines.local import TransformersCaptioner
            from geomoe.ray_env import worker_device

            self.local = TransformersCaptioner(engine.model, engine.max_new_tokens, device=worker_device())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def caption(self, items: list[tuple[str, str]]) -> list[str | None]:
        """(image path, platform) -> caption, or None when the VLM failed or wrote an unusable caption."""
        from geomoe.engines.prompts import caption_verdict

        if self.spec.engine.kind == "transformers":
            texts = self.local.caption([p for p, _ in items], [self.prompt.text(f) for _, f in items])
        else:
            texts = list(await asyncio.gather(*(asyncio.to_thread(self._over_http, p, f) for p, f in items)))
        return [caption_verdict(t, self.spec.max_words)[0] for t in texts]

    def _over_http(self, path: str, platform: str) -> str | None:
        """One OpenAI chat request with the image as a data: URL; retried with backoff, None when it never works."""
        from geomoe.engines.http_chat import chat_completion
        from geomoe.engines.prompts import image_data_url

        return chat_completion(self.spec.engine, self.prompt.messages(image_data_url(path), platform))


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Reranker:
    """CGRS online: the offline re-ranker's scoring (``caption_evidence`` + ``fuse_top_n``) on one query's
    candidates, with the caption store restricted to the index's images (so the lexical IDF is the offline one)."""

    def __init__(self, checkpoint: str, index: str, rerank: dict[str, Any], captioner: Any | None) -> None:
        from geomoe.config import RerankSpec
        from geomoe.data.caption_store import read_caption_store
        from geomoe.models.factory import load_pe_moe
        from geomoe.ray_env import worker_device
        from geomoe.retrieval.index import read_index
        from geomoe.retrieval.rerank import LexicalScorer

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
        from geomoe.retrieval.rerank import caption_evidence, fuse_top_n

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
        from geomoe.retrieval.embed import embed_dense_texts

        new = list(dict.fromkeys(t for t in texts if t not in self.embedded))
        if new:
            if len(self.embedded) > 100_000:  # a bound on memory; captions are re-embedded after it
                self.embedded.clear()
            vectors = embed_dense_texts(self.model, self.tokenizer, new, self.max_length)
            self.embedded.update(zip(new, vectors, strict=True))
        return np.stack([self.embedded[t] for t in texts])
