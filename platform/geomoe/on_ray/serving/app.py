"""The gated retriever on Ray Serve: composed deployments behind a FastAPI ingress.

- ``QueryEncoder``: text trunk + expert tails + gate of a PE-MoE checkpoint; ``@serve.batch`` groups concurrent
  queries into one forward pass. Returns the query vector [g_1 t_1, ..., g_K t_K] and the gate weights.
- ``GallerySearch``: the index folder (geomoe.families.pe_moe.index) in memory; exact fused search with an optional
  platform filter.
- ``Reranker``: CGRS over the first stage's top ``top_n`` with the caption store, the offline evaluator's code
  (geomoe.core.retrieval.rerank); an image the store lacks is captioned by the ``Captioner`` deployment once and cached.
- ``Captioner``: a VLM, local (transformers) or behind an OpenAI-compatible URL (a ``ray.serve.llm`` app).
- ``Localizer``: an SMGeo checkpoint; drone image + click + satellite tile -> box, ``@serve.batch``.
- ``Predictor`` (one per name under ``predictors``): a checkpoint of a family with predictions of its own
  (``Family.predict``; geomoe.on_ray.serving.predictor), JSON inputs -> JSON outputs.
- ``Ingress``: ``POST /search``, ``POST /localize``, ``POST /predict/<name>``, ``GET /healthz``, ``GET /info``;
  typed responses; request
  validation with clear 4xx errors, limits on text length, k, image bytes and pixels; before any body is read
  (``geomoe.on_ray.serving.gate``): the optional bearer token (401), JSON only (415), the body's size (413).
  ``/healthz`` is 200 only once every deployment answers (503 before).

Modules: schemas (requests, limits, ``serve_spec``), retrieval (encoder, search), rerank (re-ranker, captioner),
localize; this one holds the ingress and the builder. Build with ``build_app(args)``, ``args`` a
``geomoe.core.config.ServeSpec`` mapping (the ``import_path`` builder of serve/*.yaml). Replicas, resources and
autoscaling per deployment come from the Serve config file.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request model's class, not a string, in a
# Serve ingress method's signature, or it reads the body parameter as a query parameter.
import asyncio
import base64
import binascii
import io
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from geomoe.core.data.images import DECODE_ERRORS, decoded
from geomoe.core.errors import SpecError
from geomoe.on_ray.serving.captioner import Captioner
from geomoe.on_ray.serving.gate import OPEN_PATHS, RequestGate
from geomoe.on_ray.serving.predictor import Predictor, family_of_checkpoint
from geomoe.on_ray.serving.schemas import (
    LIMITS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ErrorBody,
    FieldError,
    HealthResponse,
    InfoResponse,
    LocalizeRequest,
    LocalizeResponse,
    PredictRequest,
    PredictResponse,
    SearchRequest,
    SearchResponse,
    error_responses,
    serve_spec,
)
from ray import serve

READY_TIMEOUT_S = 2.0  # /healthz waits this long for each deployment's answer
# The schema and its docs page are served by the routes below (they know this replica's token and route prefix).
api = FastAPI(title="geomoe retriever", openapi_url=None, docs_url=None, redoc_url=None)
api.add_middleware(RequestGate)


def openapi_schema(root_path: str = "") -> dict[str, Any]:
    """The schema as this replica serves: the bearer scheme (and 401) only when a token is configured, so a
    client or a fuzzer is told exactly what the app enforces; the application's route prefix as its server."""
    from fastapi.openapi.utils import get_openapi

    from geomoe.on_ray.serving import gate

    servers = [{"url": root_path}] if root_path else None
    schema = get_openapi(title=api.title, version=api.version, routes=api.routes, servers=servers)
    for path in gate.unserved():
        schema["paths"].pop(path, None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if gate.token() is None or path in OPEN_PATHS:
                operation.get("responses", {}).pop("401", None)
            else:
                operation["security"] = [{"bearer": []}]
    if gate.token() is not None:
        scheme = {"type": "http", "scheme": "bearer", "description": "the token named by the Serve config's token_env"}
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": scheme}
    return schema


@api.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(openapi_schema(str(request.scope.get("root_path", ""))))


@api.get("/docs", include_in_schema=False)
async def docs_page(request: Request) -> Any:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=api.title)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    body = ErrorBody(status=error.status_code, detail=str(error.detail))
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=getattr(error, "headers", None))


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming every invalid field (FastAPI's own shape differs from the other errors')."""
    fields = [FieldError(field=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in error.errors()]
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields) or "invalid request"
    return JSONResponse(ErrorBody(status=422, detail=detail, errors=fields).model_dump(), status_code=422)


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
    """The file of a base64 image field and its displayed size: 413 over the byte or pixel limit (checked from the
    header, before decoding), 422 when it is not base64 or does not decode completely. Nothing is fetched from a
    URL."""
    from PIL import Image, UnidentifiedImageError

    if len(encoded) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise HTTPException(status_code=413, detail=f"{field}: over the {MAX_IMAGE_BYTES}-byte limit")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(status_code=422, detail=f"{field}: not base64 ({err})") from err
    try:
        with Image.open(io.BytesIO(raw)) as image:  # the header first: a bomb is refused before any decoding
            size = image.size
    except Image.DecompressionBombError as err:
        raise HTTPException(status_code=413, detail=f"{field}: {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise HTTPException(status_code=422, detail=f"{field}: not a readable image file") from err
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise HTTPException(status_code=413, detail=f"{field}: {size[0]}x{size[1]} is over {MAX_IMAGE_PIXELS} px")
    try:  # the whole file: a truncated one is a 422 here, not a failure in the localizer
        upright = decoded(raw).size  # as the model sees it (EXIF orientation applied): what a click refers to
    except DECODE_ERRORS as err:
        raise HTTPException(status_code=422, detail=f"{field}: not a readable image file ({err})") from err
    return raw, upright


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
        predictors: dict[str, Any] | None = None,
    ) -> None:
        from geomoe.on_ray.serving import gate

        unserved = (() if localizer is not None else ("/localize",)) + (() if predictors else ("/predict/{name}",))
        gate.configure(token, unserved)  # read by the middleware and the schema
        self.gallery = search
        self.reranker, self.rerank_depth, self.localizer = reranker, rerank_depth, localizer
        self.predictors = predictors or {}
        self.encode = encoder.encode if batched else encoder.encode_unbatched
        self.find = search.search if batched else search.search_unbatched
        stages = {"QueryEncoder": encoder, "GallerySearch": search, "Reranker": reranker, "Localizer": localizer}
        stages |= {f"Predictor-{name}": handle for name, handle in self.predictors.items()}
        self.stages = {name: handle for name, handle in stages.items() if handle is not None}
        self.ready = False

    @api.get("/healthz", response_model=HealthResponse, responses=error_responses(503))
    async def healthz(self) -> Any:
        """200 once every deployment has answered (its replica built, its first call made), 503 until then."""
        if not self.ready:
            answers = await asyncio.gather(*(self._answers(h) for h in self.stages.values()))
            waiting = [name for name, ok in zip(self.stages, answers, strict=True) if not ok]
            if waiting:
                body = HealthResponse(status="starting", waiting_for=waiting)
                return JSONResponse(body.model_dump(), status_code=503)
            self.ready = True
        return HealthResponse(status="ok")

    @staticmethod
    async def _answers(handle: Any) -> bool:
        try:
            return bool(await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S))
        except Exception:  # a timeout, a replica still building or one that died: not ready
            return False

    @api.get("/info", response_model=InfoResponse, responses=error_responses(401))
    async def info(self) -> dict[str, Any]:
        import torch

        import geomoe
        import ray

        return {
            "index": await self.gallery.info.remote(),
            "rerank": None if self.reranker is None else await self.reranker.info.remote(),
            "localizer": None if self.localizer is None else "SMGeo",
            "predictors": sorted(self.predictors),
            "limits": LIMITS,
            "versions": {"geomoe": geomoe.__version__, "ray": ray.__version__, "torch": torch.__version__},
        }

    @api.post(
        "/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 401, 409, 413, 415, 422),
    )
    async def search(self, request: SearchRequest) -> dict[str, Any]:
        if request.rerank and self.reranker is None:
            raise HTTPException(status_code=409, detail="rerank: this deployment has no re-ranker (args.rerank)")
        encoded = await _once_more_if_replica_died(lambda: self.encode.remote(request.query))
        platforms = [p.value for p in request.platforms] if request.platforms else None
        depth = max(request.k, self.rerank_depth if request.rerank else 0)  # the re-ranker sees its whole top_n
        results = await self.find.remote((encoded["vector"], depth, platforms))
        if request.rerank and self.reranker is not None:
            results = await self.reranker.rerank.remote(request.query, results)
        return {"query": request.query, "results": results[: request.k], "expert_weights": encoded["gate"]}

    @api.post("/localize", response_model=LocalizeResponse, responses=error_responses(400, 401, 404, 413, 415, 422))
    async def localize(self, request: LocalizeRequest) -> dict[str, Any]:
        if self.localizer is None:
            raise HTTPException(status_code=404, detail="this deployment has no localizer (args.localizer)")
        drone, drone_wh = _image_bytes(request.drone_image, "drone_image")
        tile, _ = _image_bytes(request.satellite_tile, "satellite_tile")
        x, y = request.click
        if not (0 <= x < drone_wh[0] and 0 <= y < drone_wh[1]):
            raise HTTPException(status_code=422, detail=f"click ({x}, {y}) lies outside the {drone_wh} drone image")
        return dict(await self.localizer.localize.remote((drone, (x, y), tile)))

    @api.post(
        "/predict/{name}", response_model=PredictResponse, responses=error_responses(400, 401, 404, 413, 415, 422)
    )
    async def predict(self, name: str, request: PredictRequest) -> dict[str, Any]:
        """The predictions of the checkpoint the Serve config lists as ``predictors.<name>`` (its family's own)."""
        if name not in self.predictors:
            served = ", ".join(sorted(self.predictors)) or "none"
            raise HTTPException(status_code=404, detail=f"no predictor named {name!r} (served: {served})")
        answer = await self.predictors[name].predict.remote(request.inputs)
        if "error" in answer:
            raise HTTPException(status_code=422, detail=str(answer["error"]))
        return {"name": name, "outputs": answer["outputs"]}


def deployments_of(checkpoint: str, key: str, roles: tuple[str, ...]) -> dict[str, Any]:
    """The Serve deployments the family of ``checkpoint`` declares (geomoe.families.base.Family.serve_deployments),
    its family read from the checkpoint's manifest; SpecError naming ``key`` when it lacks one of ``roles``."""
    family = family_of_checkpoint(checkpoint)
    declared = family.serve_deployments()
    missing = [role for role in roles if role not in declared]
    if missing:
        raise SpecError("serve args", key, f"a {family.name} checkpoint; its family serves no {', '.join(missing)}")
    return declared


def build_app(args: dict[str, Any]) -> Any:
    """The application from a ``ServeSpec`` mapping: the import_path builder of serve/*.yaml (Serve calls a
    builder with exactly one argument)."""
    return compose(args)


def compose(
    args: dict[str, Any],
    batched: bool = True,
    options: dict[str, dict[str, Any]] | None = None,
    swap: dict[str, Any] | None = None,
) -> Any:
    """``build_app`` for Python callers: ``options`` (deployment name -> ``.options()`` keywords) is what a Serve
    config file sets per deployment; ``batched=False`` encodes and searches one query at a time; ``swap``
    (deployment name -> a deployment with the same methods) replaces one (``bench serve``'s no-op stages)."""
    spec = serve_spec(args)
    assert spec.checkpoint is not None  # serve_spec fills it from the index

    def bound(deployment: Any, *init: Any) -> Any:
        return deployment.options(**(options or {}).get(deployment.name, {})).bind(*init)

    roles = ("QueryEncoder", "GallerySearch") + (("Reranker",) if spec.rerank is not None else ())
    retriever = deployments_of(spec.checkpoint, "checkpoint", roles) | (swap or {})
    batching = spec.batching.model_dump()
    encoder = bound(retriever["QueryEncoder"], spec.checkpoint, batching)
    gallery = bound(retriever["GallerySearch"], spec.index, batching)
    reranker = localizer = None
    if spec.rerank is not None:
        captioner = None if spec.captioner is None else bound(Captioner, spec.captioner.model_dump(mode="json"))
        rerank = spec.rerank.model_dump(mode="json")
        reranker = bound(retriever["Reranker"], spec.checkpoint, spec.index, rerank, captioner)
    if spec.localizer is not None:
        localizer = bound(deployments_of(spec.localizer, "localizer", ("Localizer",))["Localizer"], spec.localizer)
    predictor: Any = Predictor  # one deployment per name, "Predictor-<name>" in a Serve config file
    predictors = {name: bound(predictor.options(name=f"Predictor-{name}"), checkpoint)
                  for name, checkpoint in _predictor_checkpoints(spec.predictors).items()}  # fmt: skip
    depth = spec.rerank.top_n if spec.rerank is not None else 0
    return bound(Ingress, encoder, gallery, spec.token, reranker, depth, localizer, batched, predictors)


def _predictor_checkpoints(predictors: dict[str, str]) -> dict[str, str]:
    """``predictors`` once each checkpoint's family is known to serve predictions (Family.predict): a SpecError
    naming ``predictors.<name>`` otherwise, before anything starts."""
    for name, checkpoint in predictors.items():
        family = family_of_checkpoint(checkpoint)
        if not family.serves_predictions():
            raise SpecError(
                "serve args", f"predictors.{name}", f"a {family.name} checkpoint; its family has no predict"
            )
    return predictors
