"""Generation engines and the stages that use them offline: caption refinement and gallery captioning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from geomoe.core.config.parsing import Strict


class EngineSpec(Strict):
    """A generation engine (geomoe.core.engines): ``transformers`` locally; ``http`` and ``vllm`` through ray.data.llm
    processors (the Ray layer). ``model``: a local folder or hub id (http: the served model name)."""

    kind: Literal["transformers", "http", "vllm"] = "transformers"
    model: str
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    concurrency: int = Field(1, ge=1, description="engine replicas (actors)")
    use_gpu: bool = False
    url: str | None = Field(None, description="http: the OpenAI-compatible chat completions URL")
    qps: int | None = Field(None, gt=0, description="http: requests per second (None: one at a time)")
    max_retries: int = Field(3, ge=0, description="http: retries of a failed request")
    retry_wait_s: float = Field(1.0, gt=0, description="http: first retry's wait; doubles per retry")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: engine arguments")
    accelerator_type: str | None = Field(None, description="vllm: the GPU type to schedule on, e.g. H100")
    tiny: bool = Field(False, description="build a tiny random model at ``model`` when it is missing (demos)")

    @model_validator(mode="after")
    def _http_needs_url(self) -> EngineSpec:
        if self.kind == "http" and not self.url:
            raise ValueError("the http engine needs url (the chat completions endpoint)")
        return self


class RefineSpec(Strict):
    """LLM caption refinement of the prepared training captions (stage ``refine``)."""

    engine: EngineSpec
    output_dir: str
    prompts: str | None = Field(
        None, description="prompt file or builtin:refine_v1 / builtin:refine_v2; None = builtin:refine_v2"
    )
    min_words: int = Field(3, ge=1)
    max_words: int = Field(40, ge=1)


class CaptionSpec(Strict):
    """Gallery captioning for CGRS (stage ``caption``): every image of a prepared split, once, into a caption
    store that ``eval.rerank[].captions`` can name. ``engine.model``: a chat VLM (any engine) or, with the
    transformers engine, also an image-to-text model that takes no prompt (VisionEncoderDecoder)."""

    engine: EngineSpec
    output: str = Field(description="caption store to write (Parquet)")
    prompts: str | None = Field(
        None, description="prompt file or builtin:caption_v1 / builtin:caption_v2; None = builtin:caption_v2"
    )
    platform_labels: bool = Field(
        False, description="allow a prompt that tells the VLM each image's platform (the dataset's labels)"
    )
    split: Literal["test", "train"] = "test"
    max_words: int = Field(60, ge=1)
