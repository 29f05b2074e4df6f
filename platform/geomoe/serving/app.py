"""The gated retriever on Ray Serve: composed deployments behind a FastAPI ingress.

- ``QueryEncoder``: text trunk + expert tails + gate of a PE-MoE checkpoint; ``@serve.batch`` groups concurrent
  queries into one forward pass. Returns the query vector [g_1 t_1, ..., g_K t_K] and the gate weights.
- ``GallerySearch``: the index folder (geomoe.retrieval.index) in memory; exact fused search with an optional
  platform filter.
- ``Reranker``: CGRS over the first stage's top ``top_n`` with the caption store, the offline evaluator's code
  (geomoe.retrieval.rerank); an image the store lacks is captioned by the ``Captioner`` deployment once and cached.
- ``Captioner``: a VLM, local (transformers) or behind an OpenAI-compatible URL (a ``ray.serve.llm`` app).
- ``Localizer``: an SMGeo checkpoint; drone image + click + satellite tile -> box, ``@serve.batch``.
- ``Ingress``: ``POST /search``, ``POST /localize``, ``GET /healthz``, ``GET /info``; request validation with
  clear 4xx errors, limits on text length, k, image bytes and pixels, an optional bearer token.

Build with ``build_app(args)``, ``args`` a ``geomoe.config.ServeSpec`` mapping (the ``import_path`` builder of
serve/*.yaml). Replicas, resources and autoscaling per deployment come from the Serve config file.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request model's class, not a string, in a
# Serve ingress method's signature, or it reads the body parameter as a query parameter.
import asyncio
import base64
import binascii
import hmac
import io
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from geomoe.config import ServeCaptionerSpec, ServeSpec, parse_spec
from geomoe.families.pe_moe.spec import PEMoEModelSpec
from geomoe.families.smgeo.spec import SMGeoModelSpec
from geomoe.platforms import Platform
from ray import serve

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
LIMITS = {"query_chars": MAX_QUERY_CHARS, "k": MAX_K, "image_bytes": MAX_IMAGE_BYTES, "image_pixels": MAX_IMAGE_PIXELS}
LIMITS = {"query_chars": MAX_QUERY_CHARS, "k": MAX_K, "image_bytes": MAX_IMAGE_BYTES, "image_pixels": MAX_IMAGE_PIXELS}
api = FastAPI(title="geomoe retriever")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: bool = Field(False, description="re-rank the top candidates by their captions (CGRS)")
    platforms: list[Platform] | None = Field(None, min_length=1, description="only images of these platforms")


class LocalizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drone_image: str = Field(min_length=1, description="the drone (query) image file, base64")
    click: tuple[float, float] = Field(description="(x, y) of the object in drone image pixels")
    satellite_tile: str = Field(min_length=1, description="the satellite (reference) tile file, base64")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class QueryEncoder:
    def __init__(self, checkpoint: str) -> None:
        from geomoe.models.factory import load_pe_moe

        self.model, self.tokenizer, spec, _ = load_pe_moe(checkpoint)
        self.max_length = spec.model_as(PEMoEModelSpec).text.max_length
        self.experts = [e.name for e in spec.model_as(PEMoEModelSpec).experts]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode(self, queries: list[str]) -> list[dict[str, Any]]:
        return self.encode_now(queries)

    async def encode_unbatched(self, query: str) -> dict[str, Any]:
        """One query per forward pass (``bench serve``'s comparison against ``@serve.batch``)."""
        return self.encode_now([query])[0]

    def encode_now(self, queries: list[str]) -> list[dict[str, Any]]:
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


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Captioner:
    """Captions of gallery images for the re-ranker: the caption stage's prompt, cleaning and rejection rules."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from geomoe.engines.prompts import load_caption_prompt

        self.spec = ServeCaptionerSpec.model_validate(spec)
        self.prompt = load_caption_prompt(self.spec.prompts)
        engine = self.spec.engine
        if engine.kind == "transformers":
            from geomoe.engines.local import TransformersCaptioner

            device = "cuda" if engine.use_gpu else "cpu"
            self.local = TransformersCaptioner(engine.model, engine.max_new_tokens, device=device)

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
        import json
        import time
        import urllib.request

        from geomoe.engines.prompts import image_data_url

        engine = self.spec.engine
        assert engine.url is not None  # EngineSpec: the http engine needs url
        body = {
            "model": engine.model,
            "messages": self.prompt.messages(image_data_url(path), platform),
            "max_tokens": engine.max_new_tokens,
            "temperature": engine.temperature,
        }
        request = urllib.request.Request(
            engine.url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        for attempt in range(engine.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return str(json.loads(response.read())["choices"][0]["message"]["content"])
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(engine.retry_wait_s * 2**attempt)
        return None


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Reranker:
    """CGRS online: the offline re-ranker's scoring (``caption_evidence`` + ``fuse_top_n``) on one query's
    candidates, with the caption store restricted to the index's images (so the lexical IDF is the offline one)."""

    def __init__(self, checkpoint: str, index: str, rerank: dict[str, Any], captioner: Any | None) -> None:
        from geomoe.config import RerankSpec
        from geomoe.data.caption_store import read_caption_store
        from geomoe.models.factory import load_pe_moe
        from geomoe.retrieval.index import read_index
        from geomoe.retrieval.rerank import LexicalScorer

        self.spec = RerankSpec.model_validate(rerank)
        self.model, self.tokenizer, trained, _ = load_pe_moe(checkpoint)
        self.max_length = trained.model_as(PEMoEModelSpec).text.max_length
        gallery = read_index(index)
        ids = [str(i) for i in gallery.ids]
        store = read_caption_store(self.spec.captions)
        self.stored = {image_id: store[image_id] for image_id in ids if image_id in store}
        self.lexical = LexicalScorer([c for image_id in ids for c in self.stored.get(image_id, [])])
        self.path_of = dict(zip(ids, gallery.manifest.get("image_paths", []), strict=False))
        self.captioner = captioner
        self.generated: dict[str, str] = {}
        self.failed_captions = 0
        self.embedded: dict[str, np.ndarray] = {}

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
        from geomoe.retrieval.embed import embed_shared_texts

        new = list(dict.fromkeys(t for t in texts if t not in self.embedded))
        if new:
            if len(self.embedded) > 100_000:  # a bound on memory; captions are re-embedded after it
                self.embedded.clear()
            vectors = embed_shared_texts(self.model, self.tokenizer, new, self.max_length)
            self.embedded.update(zip(new, vectors, strict=True))
        return np.stack([self.embedded[t] for t in texts])


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Localizer:
    """SMGeo: drone image + click + satellite tile -> xyxy box in tile pixels and its heatmap confidence."""

    def __init__(self, checkpoint: str) -> None:
        from geomoe.models.smgeo import load_smgeo

        self.model, spec, _ = load_smgeo(checkpoint)
        self.checkpoint = checkpoint
        self.query_size, self.reference_size = (
            spec.model_as(SMGeoModelSpec).query_size,
            spec.model_as(SMGeoModelSpec).reference_size,
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def localize(self, requests: list[tuple[bytes, tuple[float, float], bytes]]) -> list[dict[str, Any]]:
        import torch

        from geomoe.data.localization import decode_request, to_file_pixels
        from geomoe.models.smgeo import decode_boxes

        decoded = [decode_request(q, c, r, self.query_size, self.reference_size) for q, c, r in requests]
        inputs = [torch.from_numpy(np.stack([d[k] for d in decoded])) for k in ("query", "click", "reference")]
        with torch.no_grad():
            out = self.model(*inputs)
        size = (self.reference_size, self.reference_size)
        boxes = decode_boxes(out["heatmap_logits"], out["box"], size).float().numpy()
        scores = torch.sigmoid(out["heatmap_logits"].flatten(1).max(dim=1).values).float().numpy()
        wh = np.stack([d["reference_wh"] for d in decoded])
        return [{"box": box.tolist(), "score": float(score)}
                for box, score in zip(to_file_pixels(boxes, wh, self.reference_size), scores, strict=True)]  # fmt: skip


async def _once_more_if_replica_died(call: Any) -> Any:
    """Await ``call()``; if the replica serving it died meanwhile (killed, node lost), send it once more: Serve
    routes the retry to a live replica. Only for idempotent calls (encoding a query)."""
    from ray.exceptions import RayActorError  # ActorDiedError and ActorUnavailableError

    try:
        return await call()
    except RayActorError:
        return await call()


# Helpers the ingress calls are defined above it: ``serve.ingress`` pickles the FastAPI routes by value when the
# class is decorated, with the module globals that exist at that moment.
def _image_bytes(encoded: str, field: str) -> tuple[bytes, tuple[int, int]]:
    """The decoded file of a base64 image field and its size, read from the header only: 413 over the byte or
    pixel limit, 422 when it is not base64 or not an image. Nothing is ever fetched from a URL."""
    from PIL import Image, UnidentifiedImageError

    if len(encoded) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise HTTPException(status_code=413, detail=f"{field}: over the {MAX_IMAGE_BYTES}-byte limit")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(status_code=422, detail=f"{field}: not base64 ({err})") from err
    try:
        with Image.open(io.BytesIO(raw)) as image:
            size = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise HTTPException(status_code=422, detail=f"{field}: not a readable image file") from err
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise HTTPException(status_code=413, detail=f"{field}: {size[0]}x{size[1]} is over {MAX_IMAGE_PIXELS} px")
    return raw, size


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        encoder: Any,
        search: Any,
        token: str | None = None,
        reranker: Any | None = None,
        rerank_depth: int = 0,
        localizer: Any | None = None,
        batched: bool = True,
    ) -> None:
        self.gallery, self.token = search, token
        self.reranker, self.rerank_depth, self.localizer = reranker, rerank_depth, localizer
        self.encode = encoder.encode if batched else encoder.encode_unbatched

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

        return {
            "index": await self.gallery.info.remote(),
            "rerank": None if self.reranker is None else await self.reranker.info.remote(),
            "localizer": None if self.localizer is None else "SMGeo",
            "limits": LIMITS,
            "versions": {"geomoe": geomoe.__version__, "ray": ray.__version__, "torch": torch.__version__},
        }

    @api.post("/search")
    async def search(self, request: SearchRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._authorise(authorization)
        if request.rerank and self.reranker is None:
            raise HTTPException(status_code=400, detail="rerank: this deployment has no re-ranker (args.rerank)")
        encoded = await _once_more_if_replica_died(lambda: self.encode.remote(request.query))
        platforms = [p.value for p in request.platforms] if request.platforms else None
        depth = max(request.k, self.rerank_depth if request.rerank else 0)  # the re-ranker sees its whole top_n
        results = await self.gallery.search.remote(encoded["vector"], depth, platforms)
        if request.rerank and self.reranker is not None:
            results = await self.reranker.rerank.remote(request.query, results)
        return {"query": request.query, "results": results[: request.k], "expert_weights": encoded["gate"]}

    @api.post("/localize")
    async def localize(self, request: LocalizeRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._authorise(authorization)
        if self.localizer is None:
            raise HTTPException(status_code=400, detail="this deployment has no localizer (args.localizer)")
        drone, drone_wh = _image_bytes(request.drone_image, "drone_image")
        tile, _ = _image_bytes(request.satellite_tile, "satellite_tile")
        x, y = request.click
        if not (0 <= x < drone_wh[0] and 0 <= y < drone_wh[1]):
            raise HTTPException(status_code=422, detail=f"click ({x}, {y}) lies outside the {drone_wh} drone image")
        return dict(await self.localizer.localize.remote((drone, (x, y), tile)))


def serve_spec(args: dict[str, Any], source: str = "serve args") -> ServeSpec:
    """Validated args with relative paths made absolute against the working directory (where ``serve run``
    is started), the checkpoint defaulting to the index's and the token read from ``token_env``."""
    from geomoe import storage

    spec = parse_spec(ServeSpec, args, source)
    absolute = storage.absolute  # against the working directory; URIs stay as they are

    updates: dict[str, Any] = {"index": absolute(spec.index)}
    manifest_path = storage.join(updates["index"], storage.MANIFEST)
    if not storage.is_file(manifest_path):
        shown = storage.redact(manifest_path)
        raise FileNotFoundError(f"{source}: index: {shown} not found (run the job's 'index' stage)")
    if spec.checkpoint is None:
        updates["checkpoint"] = storage.read_json(manifest_path)["checkpoint"]
    else:
        updates["checkpoint"] = absolute(spec.checkpoint)
    if spec.localizer is not None:
        updates["localizer"] = absolute(spec.localizer)
    if spec.rerank is not None:
        updates["rerank"] = spec.rerank.model_copy(update={"captions": absolute(spec.rerank.captions)})
    if spec.token_env is not None:
        if not os.environ.get(spec.token_env):
            raise ValueError(f"{source}: token_env: the environment variable {spec.token_env} is not set")
        updates["token"] = os.environ[spec.token_env]
    return spec.model_copy(update=updates)


def build_app(args: dict[str, Any]) -> Any:
    """The application from a ``ServeSpec`` mapping: the import_path builder of serve/*.yaml (Serve calls a
    builder with exactly one argument)."""
    return compose(args)


def compose(args: dict[str, Any], batched: bool = True, options: dict[str, dict[str, Any]] | None = None) -> Any:
    """``build_app`` for Python callers: ``options`` (deployment name -> ``.options()`` keywords) is what a Serve
    config file sets per deployment; ``batched=False`` encodes one query per forward pass (``bench serve``)."""
    spec = serve_spec(args)
    assert spec.checkpoint is not None  # serve_spec fills it from the index

    def bound(deployment: Any, *init: Any) -> Any:
        return deployment.options(**(options or {}).get(deployment.name, {})).bind(*init)

    encoder, gallery = bound(QueryEncoder, spec.checkpoint), bound(GallerySearch, spec.index)
    reranker = localizer = None
    if spec.rerank is not None:
        captioner = None if spec.captioner is None else bound(Captioner, spec.captioner.model_dump(mode="json"))
        reranker = bound(Reranker, spec.checkpoint, spec.index, spec.rerank.model_dump(mode="json"), captioner)
    if spec.localizer is not None:
        localizer = bound(Localizer, spec.localizer)
    depth = spec.rerank.top_n if spec.rerank is not None else 0
    return bound(Ingress, encoder, gallery, spec.token, reranker, depth, localizer, batched)
