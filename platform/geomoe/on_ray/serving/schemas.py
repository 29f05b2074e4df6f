"""The retriever app's request schemas, limits and argument validation (no Ray Serve here, so that checking a
Serve config file does not import Serve or FastAPI's app)."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from geomoe.core import storage
from geomoe.core.config import ServeSpec, parse_spec
from geomoe.core.errors import SpecError
from geomoe.core.platforms import Platform
from geomoe.core.tracking import checkpoint_location, is_model_uri

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
LIMITS = {"query_chars": MAX_QUERY_CHARS, "k": MAX_K, "image_bytes": MAX_IMAGE_BYTES, "image_pixels": MAX_IMAGE_PIXELS}


# Requests are strict: no coercion of numbers to booleans, strings to numbers or numbers to strings (``"rerank": 0``
# is refused, not read as false). Each field is strict on its own: a model-wide strict mode would also refuse a
# JSON array for the click tuple, since FastAPI validates the decoded Python objects.
StrictFinite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# JSON Schema's integer admits 24.0; a string or a boolean is still refused.
WholeNumber = Annotated[StrictInt, BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)]
# Standard base64 (RFC 4648, padded). Whether the bytes are an image within the limits is checked by the app (422,
# 413): JSON Schema cannot say it.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Base64Image = Annotated[StrictStr, Field(min_length=4, pattern=BASE64, json_schema_extra={"contentEncoding": "base64"})]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: WholeNumber = Field(10, ge=1, le=MAX_K)
    rerank: StrictBool = Field(False, description="re-rank the top candidates by their captions (CGRS)")
    platforms: list[Platform] | None = Field(None, min_length=1, description="only images of these platforms")


class LocalizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drone_image: Base64Image = Field(description="the drone (query) image file (JPEG, PNG, ...), base64")
    click: tuple[StrictFinite, StrictFinite] = Field(description="(x, y) of the object in drone image pixels")
    satellite_tile: Base64Image = Field(description="the satellite (reference) tile file, base64")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(description="what the served family's predict reads (its docs name the keys)")


class PredictResponse(BaseModel):
    name: str = Field(description="the predictor (a name the Serve config lists under predictors)")
    outputs: dict[str, Any] = Field(description="what the family predicts")


class SearchHit(BaseModel):
    image_id: str
    score: float = Field(description="the first stage's fused score (Eq. 1)")
    platform: str | None = Field(None, description="satellite, drone or ground, when the index records it")
    captions: list[str] | None = Field(None, description="with rerank: the captions CGRS compared the query with")
    caption_score: float | None = Field(None, description="with rerank: the query's evidence from those captions")


class SearchResponse(BaseModel):
    query: str
    results: list[SearchHit] = Field(description="best first; at most k")
    expert_weights: dict[str, float] = Field(description="the gate's weight of each expert for this query")


class LocalizeResponse(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in satellite tile pixels")
    score: float = Field(description="the head's confidence in the box")


class HealthResponse(BaseModel):
    status: str = Field(description="ok: every deployment answers; starting: some do not yet")
    waiting_for: list[str] = Field(default_factory=list, description="the deployments that do not answer yet")


class InfoResponse(BaseModel):
    index: dict[str, Any] = Field(description="the served index's manifest: checkpoint, gallery, experts, size")
    rerank: dict[str, Any] | None = Field(description="the re-ranker's caption store and counters, if any")
    localizer: str | None
    predictors: list[str] = Field(default_factory=list, description="the names POST /predict/<name> serves")
    limits: dict[str, int]
    versions: dict[str, str]


class FieldError(BaseModel):
    field: str = Field(description="where in the request, e.g. body.k")
    message: str


class ErrorBody(BaseModel):
    """Every error the app answers has this shape, whatever raised it."""

    status: int
    detail: str = Field(description="what was wrong, naming the field")
    errors: list[FieldError] = Field(default_factory=list, description="one entry per invalid field (422)")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error codes, all with the ``ErrorBody`` shape."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}


ERROR_MEANINGS = {
    400: "the body could not be read (not JSON, or not UTF-8)",
    401: "missing or wrong bearer token (checked before the body is read)",
    404: "this deployment does not serve the operation (no localizer, or no predictor of that name, configured)",
    409: "the request asks for a stage this deployment lacks (rerank without a re-ranker)",
    413: "the body over its size limit (refused before it is read), or an image over the byte or pixel limit",
    415: "the body is not application/json",
    422: "a field is missing, of the wrong type, out of range or not a readable image",
    503: "a deployment does not answer yet (starting)",
}


def serve_spec(args: dict[str, Any], source: str = "serve args") -> ServeSpec:
    """Validated args with relative paths made absolute against the working directory (where ``serve run``
    is started), the checkpoint defaulting to the index's and the token read from ``token_env``."""
    spec = parse_spec(ServeSpec, args, source)

    def absolute(location: str) -> str:
        """Against the working directory (URIs stay as they are); a registry URI (``models:/name/3``) becomes its
        version's checkpoint: where it lives in object storage, or run artifacts downloaded here once (so on a
        multi-node cluster register checkpoints that live in object storage, as jobs with URI outputs do)."""
        return checkpoint_location(location) if is_model_uri(location) else storage.absolute(location)

    updates: dict[str, Any] = {"index": absolute(spec.index)}
    manifest_path = storage.join(updates["index"], storage.MANIFEST)
    manifest = storage.read_json_if_exists(manifest_path)  # one GET on an object store
    if manifest is None:
        shown = storage.redact(manifest_path)
        raise SpecError(source, "index", f"{shown} not found (run the job's 'index' stage)")
    if spec.checkpoint is None:
        updates["checkpoint"] = manifest["checkpoint"]
    else:
        updates["checkpoint"] = absolute(spec.checkpoint)
    if spec.localizer is not None:
        updates["localizer"] = absolute(spec.localizer)
    updates["predictors"] = {name: absolute(location) for name, location in spec.predictors.items()}
    if spec.rerank is not None:
        updates["rerank"] = spec.rerank.model_copy(update={"captions": absolute(spec.rerank.captions)})
    if spec.token_env is not None:
        if not os.environ.get(spec.token_env):
            raise SpecError(source, "token_env", f"the environment variable {spec.token_env} is not set")
        updates["token"] = os.environ[spec.token_env]
    return spec.model_copy(update=updates)
