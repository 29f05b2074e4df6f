"""The evaluation section of a job: recall protocols and K, and CGRS re-ranking."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from geomoe.core.config.parsing import Strict


class RerankSpec(Strict):
    """CGRS: re-score each query's first-stage top ``top_n`` with query-caption text similarity, fused with the
    first-stage score after per-query normalisation: (1 - weight) * first + weight * caption."""

    name: str = Field("CGRS", pattern=r"^[A-Za-z0-9_.-]+$", description="the report row: '<model> +<name>'")
    captions: str = Field(description="caption store (Parquet: image_id, caption, model_id, prompt_sha256)")
    top_n: int = Field(20, ge=2)
    weight: float = Field(0.5, ge=0, le=1)
    dense_weight: float = Field(
        1.0, ge=0, description="cosine of the frozen text model's dense embeddings (BGE-M3 dense)"
    )
    lexical_weight: float = Field(0.0, ge=0, description="IDF-weighted token overlap")
    normalise: Literal["zscore", "minmax"] = "zscore"
    diversity: float | None = Field(None, gt=0, le=1, description="push down near-duplicate images (cosine >=)")


class EvalSpec(Strict):
    rerank: list[RerankSpec] = Field(default_factory=list, description="one re-ranking, or a list to compare")
    protocols: list[Literal["exact", "building"]] = ["exact", "building"]  # pydantic copies list defaults
    ks: list[int] = [1, 5, 10]

    @field_validator("rerank", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else ([] if value is None else value)

    @field_validator("rerank")
    @classmethod
    def _distinct_names(cls, rerankers: list[RerankSpec]) -> list[RerankSpec]:
        names = [r.name for r in rerankers]
        if len(set(names)) != len(names):
            raise ValueError(f"re-rankings need distinct names, got {names}")
        return rerankers

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))
