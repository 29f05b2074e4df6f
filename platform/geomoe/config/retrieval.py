"""Retrieval-task sections of a job: evaluation (with CGRS re-ranking), the serving index, Track 4."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from geomoe.config.base import Strict


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


class Track4Spec(Strict):
    """RoboSense Track 4 submission: a query file and a gallery folder in the challenge layout."""

    queries: str
    gallery: str
    output_dir: str
    checkpoint: str | None = Field(None, description="None = the checkpoint this job trained")


class IndexSpec(Strict):
    """The serving index of a PE-MoE checkpoint (stage ``index``): every image of a prepared split embedded by
    every expert into one matrix of concatenated expert blocks (geomoe.families.pe_moe.index), plus FAISS indexes."""

    output_dir: str
    checkpoint: str | None = Field(None, description="None = the checkpoint this job trained")
    split: Literal["test", "train"] = "test"
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="stored rows; float16 keeps 3 more mantissa bits of unit vectors than bfloat16"
    )
    faiss: list[Literal["flat", "ivf", "hnsw"]] = Field(default_factory=list)
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=2)
