"""The retriever app's request schemas, limits and argument validation (no Ray Serve here, so that checking a
Serve config file does not import Serve or FastAPI's app)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geomoe import storage
from geomoe.config import ServeSpec, parse_spec
from geomoe.errors import SpecError
from geomoe.platforms import Platform
from geomoe.tracking import checkpoint_location, is_model_uri

MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
LIMITS = {"query_chars": MAX_QUERY_CHARS, "k": MAX_K, "image_bytes": MAX_IMAGE_BYTES, "image_pixels": MAX_IMAGE_PIXELS}


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
    if spec.rerank is not None:
        updates["rerank"] = spec.rerank.model_copy(update={"captions": absolute(spec.rerank.captions)})
    if spec.token_env is not None:
        if not os.environ.get(spec.token_env):
            raise SpecError(source, "token_env", f"the environment variable {spec.token_env} is not set")
        updates["token"] = os.environ[spec.token_env]
    return spec.model_copy(update=updates)
