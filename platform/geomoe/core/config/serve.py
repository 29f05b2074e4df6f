"""The ``args`` of the retriever's Serve application, validated before anything starts."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from geomoe.core.config.engines import EngineSpec
from geomoe.core.config.parsing import Strict
from geomoe.core.config.retrieval import RerankSpec

PREDICTOR_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ServeCaptionerSpec(Strict):
    """The re-ranker's VLM for gallery images missing from the caption store: ``transformers`` (a local model in
    a Serve deployment) or ``http`` (an OpenAI-compatible server, e.g. a ``ray.serve.llm`` app beside it)."""

    engine: EngineSpec
    prompts: str | None = Field(
        None, description="prompt file or builtin:caption_v1 / builtin:caption_v2; None = builtin:caption_v2"
    )
    platform_labels: bool = Field(False, description="allow a prompt that tells the VLM each image's platform")
    max_words: int = Field(60, ge=1)

    @field_validator("engine")
    @classmethod
    def _served_kinds(cls, engine: EngineSpec) -> EngineSpec:
        if engine.kind == "vllm":
            raise ValueError("serve vLLM with ray.serve.llm and point an http engine at it (serve/production.yaml)")
        if engine.use_gpu:  # a replica's model goes where Ray put the replica
            raise ValueError(
                "use_gpu: a Serve replica uses the GPU its deployment asks for: give the Captioner deployment "
                "ray_actor_options: {num_gpus: 1} instead"
            )
        return engine


class BatchingSpec(Strict):
    """``@serve.batch`` of the query encoder and the gallery search (chosen from ``geomoe bench serve``)."""

    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1, description="how long a batch waits to fill")


class ServeSpec(Strict):
    """The ``args`` of the retriever Serve application (``geomoe.on_ray.serving.app:build_app``)."""

    index: str = Field(description="index folder written by the 'index' stage")
    checkpoint: str | None = Field(None, description="PE-MoE checkpoint; None = the one the index was built with")
    token: str | None = Field(None, description="bearer token required on every request but /healthz")
    token_env: str | None = Field(None, description="environment variable holding the token (keeps it out of files)")
    rerank: RerankSpec | None = Field(None, description="CGRS over the first stage's top_n; enables rerank: true")
    captioner: ServeCaptionerSpec | None = Field(None, description="captions images the store lacks (needs rerank)")
    localizer: str | None = Field(None, description="SMGeo checkpoint; enables POST /localize")
    predictors: dict[str, str] = Field(
        default_factory=dict,
        description="name -> checkpoint of a family that serves predictions of its own (Family.predict); each "
        "enables POST /predict/<name>",
    )
    batching: BatchingSpec = Field(default_factory=lambda: BatchingSpec())

    @model_validator(mode="after")
    def _consistent(self) -> ServeSpec:
        if self.rerank is not None and self.rerank.diversity is not None:
            raise ValueError("rerank.diversity is an offline-evaluation option; the service does not apply it")
        if self.captioner is not None and self.rerank is None:
            raise ValueError("captioner needs rerank (it writes captions for re-ranking)")
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        bad = [name for name in self.predictors if not PREDICTOR_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"predictors: {bad[0]!r} is not a name for a route (letters, digits, _ and -)")
        return self
