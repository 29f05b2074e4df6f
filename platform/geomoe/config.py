"""Typed job specs, validated at the edge.

A spec is YAML -> (``--set dotted.key=value`` overrides) -> pydantic models with unknown keys forbidden.
Every failure names the file, the dotted key and the reason (``SpecError``). Later stages add their own
sections by adding fields here; nothing downstream takes a raw dict.
Relative paths in a spec are relative to the working directory the job is launched from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from geomoe import storage
from geomoe.data.records import Platform
from geomoe.errors import SpecError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PlatformRule(Strict):
    """Files whose name matches ``pattern`` (a regex, full match) belong to ``platform``."""

    pattern: str
    platform: Platform


# GeoText-1652 has no platform field (REFERENCE.md sec. 1). University-1652 names drone frames image-NN,
# the satellite tile after the building, and street views anything else; we keep the last case explicit
# so an unexpected name is reported instead of being filed under "ground" by default.
DEFAULT_PLATFORM_RULES = [
    PlatformRule(pattern=r"image-\d+\.(jpe?g|png)", platform=Platform.DRONE),
    PlatformRule(pattern=r"\d{4}\.(jpe?g|png|tif)", platform=Platform.SATELLITE),
    PlatformRule(pattern=r"(street|ground|google)[-_].+\.(jpe?g|png)", platform=Platform.GROUND),
]


class SynthSpec(Strict):
    """Size of a generated synthgeo benchmark (see ``geomoe.data.synthgeo``)."""

    seed: int = 0
    train_buildings: int = Field(24, ge=1)
    test_buildings: int = Field(12, ge=1)
    drone_views: int = Field(4, ge=1)
    ground_views: int = Field(2, ge=0)
    train_captions: int = Field(2, ge=1, description="captions per training image (GeoText has 3)")
    test_captions: int = Field(2, ge=1)
    image_size: int = Field(64, ge=16)
    localization_train: int = Field(32, ge=0)
    localization_val: int = Field(8, ge=0)
    localization_test: int = Field(8, ge=0)
    tile_size: int = Field(128, ge=32, description="satellite tile side for the localization layout")
    query_size: int = Field(64, ge=16, description="drone query side for the localization layout")


class DataSpec(Strict):
    format: Literal["geotext", "cvogl"] = "geotext"  # Track 4 is a test-time layout: see the track4 section
    root: str
    train_file: str = "train.json"
    test_file: str = "test_951_version.json"
    platform_rules: list[PlatformRule] = Field(default_factory=lambda: list(DEFAULT_PLATFORM_RULES))
    cvogl_setting: Literal["DroneAerial", "SVI"] = "DroneAerial"
    synthesize: SynthSpec | None = Field(None, description="generate a synthgeo dataset into root first")

    @field_validator("platform_rules")
    @classmethod
    def _rules_compile(cls, rules: list[PlatformRule]) -> list[PlatformRule]:
        import re

        for rule in rules:
            try:
                re.compile(rule.pattern)
            except re.error as err:
                raise ValueError(f"bad regex {rule.pattern!r}: {err}") from err
        return rules


class PreprocessSpec(Strict):
    output_dir: str
    max_words_train: int = Field(30, ge=1)
    max_words_test: int = Field(50, ge=1)
    statement_words: int = Field(12, ge=3)
    satellite_copies: int = Field(2, ge=0, description="augmented copies per satellite training pair")
    augment_jitter: float = Field(0.2, ge=0.0, lt=1.0)
    directional_phrases: list[str] | None = Field(None, description="None = the built-in list")
    validate_images: bool = True
    on_bad_record: Literal["fail", "skip"] = "fail"
    refine: Literal["none", "rules"] = Field(
        "none", description="textual domain alignment of training captions: rules = platform framing, no LLM"
    )
    refine_rules: str | None = Field(None, description="rules file for refine=rules; None = the built-in v1")
    rows_per_file: int = Field(50_000, ge=1)
    force: bool = False


class TextEncoderSpec(Strict):
    """BGE-M3-style text backbone: a hub id or local folder of an XLM-RoBERTa model."""

    source: str = "BAAI/bge-m3"
    tail_layers: int = Field(2, ge=1, description="last layers each expert copies and trains")
    max_length: int = Field(64, ge=8)
    pool: Literal["cls", "mean"] = Field(
        "cls", description="cls = BGE-M3's dense vector; mean suits random tiny models"
    )


class ImageEncoderSpec(Strict):
    """EVA-CLIP image backbone through open_clip. ``pretrained``: a tag, a local checkpoint file, or None."""

    name: str = "EVA02-L-14"
    pretrained: str | None = "merged2b_s4b_b131k"
    image_size: int = Field(384, ge=16)
    tail_blocks: int = Field(4, ge=1)
    pool: Literal["token", "avg"] = Field("token", description="token = EVA-CLIP's class token; avg suits tiny models")


class ExpertSpec(Strict):
    name: str
    platforms: list[Platform] = Field(min_length=1)


def _platform_experts() -> list[ExpertSpec]:
    return [ExpertSpec(name=p.value, platforms=[p]) for p in Platform]


class TinyModelsSpec(Strict):
    """Build random tiny models at text.source / image.pretrained when absent (demo and tests; no downloads)."""

    text_hidden: int = Field(64, ge=8)
    text_layers: int = Field(4, ge=2)
    text_heads: int = Field(2, ge=1)


class ModelSpec(Strict):
    """PE-MoE: frozen text and image trunks, one expert head per platform group, a gate over the experts."""

    name: Literal["pe_moe"] = "pe_moe"
    embed_dim: int = Field(1024, ge=8)
    text: TextEncoderSpec = Field(default_factory=lambda: TextEncoderSpec())
    image: ImageEncoderSpec = Field(default_factory=lambda: ImageEncoderSpec())
    experts: list[ExpertSpec] = Field(default_factory=_platform_experts, min_length=1)
    fusion: Literal["unified", "static", "dynamic"] = "dynamic"
    gate_hidden: int = Field(512, ge=1)
    gate_top_k: int | None = Field(None, ge=1)
    static_weights: list[float] | None = None
    temperature: float = Field(0.07, gt=0)
    learn_temperature: bool = Field(
        False, description="learnable logit scale; with small per-expert batches it tends to collapse towards zero"
    )
    tiny: TinyModelsSpec | None = None

    @model_validator(mode="after")
    def _experts_partition_platforms(self) -> ModelSpec:
        owned = [p for e in self.experts for p in e.platforms]
        if len(owned) != len(set(owned)):
            raise ValueError("experts: a platform may belong to one expert only (the gate routes to exactly one)")
        if self.fusion == "unified" and len(self.experts) != 1:
            raise ValueError("fusion 'unified' trains one head on all data: give exactly one expert")
        if self.gate_top_k is not None and self.gate_top_k > len(self.experts):
            raise ValueError(f"gate_top_k {self.gate_top_k} exceeds the {len(self.experts)} experts")
        return self

    def expert_of(self) -> dict[str, int]:
        """platform name -> expert index."""
        return {p.value: k for k, e in enumerate(self.experts) for p in e.platforms}


class SwinSpec(Strict):
    """Swin backbone built by timm (windowed and shifted-window attention, relative position bias).

    ``pretrained``: None = random weights; else a local timm checkpoint file (deployments put hub weights there).
    """

    name: str = "swin_tiny_patch4_window7_224"
    pretrained: str | None = None
    embed_dim: int = Field(96, ge=8)
    depths: list[int] = [2, 2, 6, 2]
    num_heads: list[int] = [3, 6, 12, 24]
    window_size: int = Field(7, ge=1)
    drop_path: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _stages_agree(self) -> SwinSpec:
        if len(self.depths) != len(self.num_heads) or not self.depths or min(self.depths) < 1:
            raise ValueError("depths and num_heads need one positive entry per stage")
        return self


BlockChoice = Literal["none", "even", "all"] | list[int]


class GMoESpec(Strict):
    """Grid-level sparse mixture of experts replacing the FFN of chosen Swin blocks (SMGeo Eq. 7-9)."""

    experts: int = Field(6, ge=1)
    top_k: int = Field(2, ge=1)
    grid: list[int] = Field([8, 8], min_length=2, max_length=2, description="g_h, g_w cells per feature map")
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise on router logits while training")
    blocks: list[BlockChoice] = Field(
        ["none", "even", "even", "even"], description="per stage: none | even | all | explicit block indices"
    )
    share_per_stage: bool = Field(True, description="one expert pool per stage, a router per block")
    expert_mlp_ratio: float | None = Field(None, gt=0, description="expert hidden size / dim; None = the FFN's")

    @model_validator(mode="after")
    def _k_fits(self) -> GMoESpec:
        if self.top_k > self.experts:
            raise ValueError(f"top_k {self.top_k} exceeds the {self.experts} experts")
        if min(self.grid) < 1:
            raise ValueError("grid cells must be positive")
        return self


class SMGeoLossSpec(Strict):
    """SMGeo Eq. 18: heatmap * focal (Eq. 19) + box * L1 (Eq. 20) + entropy * gate entropy term (Eq. 22)."""

    heatmap: float = Field(0.9, ge=0)
    box: float = Field(1.1, ge=0)
    entropy: float = Field(0.015, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    focal_beta: float = Field(4.0, ge=0)
    sigma_ratio: float = Field(0.15, gt=0, description="heatmap Gaussian sigma / sqrt(box w*h), in feature cells")


class SMGeoModelSpec(Strict):
    """SMGeo: shared Swin + GMoE for query and reference, query-guided fusion, anchor-free head."""

    name: Literal["smgeo"]
    backbone: SwinSpec = Field(default_factory=lambda: SwinSpec())
    gmoe: GMoESpec = Field(default_factory=lambda: GMoESpec())
    query_size: int = Field(1024, ge=16, description="drone query side after resizing")
    reference_size: int = Field(1024, ge=16, description="satellite tile side after resizing")
    click_sigma: float = Field(0.03, gt=0, description="click heat Gaussian sigma / query side")
    query_pool: Literal["click", "mean"] = Field(
        "click", description="query vector for Eq. 10: click-heat-weighted or plain average of query features"
    )
    head_channels: int = Field(256, ge=4)
    loss: SMGeoLossSpec = Field(default_factory=lambda: SMGeoLossSpec())

    @model_validator(mode="after")
    def _blocks_fit(self) -> SMGeoModelSpec:
        depths = self.backbone.depths
        if len(self.gmoe.blocks) != len(depths):
            raise ValueError(f"gmoe.blocks needs one entry per backbone stage ({len(depths)})")
        for stage, (choice, depth) in enumerate(zip(self.gmoe.blocks, depths, strict=True)):
            if isinstance(choice, list) and any(not 0 <= b < depth for b in choice):
                raise ValueError(f"gmoe.blocks[{stage}]: indices {choice} outside the stage's {depth} blocks")
        return self

    def moe_blocks(self) -> list[list[int]]:
        """Block indices that get a GMoE, per stage."""
        picks = {"none": lambda d: [], "even": lambda d: list(range(0, d, 2)), "all": lambda d: list(range(d))}
        return [
            sorted(set(c)) if isinstance(c, list) else picks[c](d)
            for c, d in zip(self.gmoe.blocks, self.backbone.depths, strict=True)
        ]


class TrainSpec(Strict):
    """Training settings. PE-MoE trains in two stages (stage1_epochs, stage2_epochs); SMGeo in one (epochs)."""

    batch_size: int = Field(128, ge=2, description="global batch (split across workers)")
    lr: float = Field(2e-5, gt=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    epochs: int = Field(25, ge=1, description="SMGeo: training epochs")
    augment: bool = Field(True, description="SMGeo: bbox-safe flip and crop of training pairs (never validation)")
    stage1_epochs: int = Field(5, ge=0)
    stage2_epochs: int = Field(2, ge=0)
    gate_weight: float = Field(1.0, ge=0)
    hard_negatives: int = Field(1, ge=1, description="mined negatives per query in stage 2")
    semi_hard: bool = Field(False, description="mine only images scoring below the query's own image")
    mining_pool: int = Field(
        1, ge=1, description="negatives are drawn from this many hardest wrong images (1 = the very hardest)"
    )
    stage2_contrastive_weight: float = Field(1.0, ge=0)
    stage2_hard_weight: float = Field(1.0, ge=0)
    stage2_lr_scale: float = Field(0.1, gt=0, description="stage 2 fine-tunes the stage-1 model at lr x this")
    mining_chunk: int = Field(1024, ge=1, description="queries scored at once while mining")
    mixed_precision: bool = Field(True, description="bf16 autocast on GPU; ignored on CPU")
    max_failures: int = Field(1, ge=0)
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per stage (SMGeo: the best ones + latest)")
    use_statements: bool = Field(True, description="train on a random short statement half of the time")
    materialize_inputs: bool = Field(False, description="decode training images once into the object store")


class RerankSpec(Strict):
    """CGRS: re-score each query's first-stage top ``top_n`` with query-caption text similarity, fused with the
    first-stage score after per-query normalisation: (1 - weight) * first + weight * caption."""

    name: str = Field("CGRS", pattern=r"^[A-Za-z0-9_.-]+$", description="the report row: '<model> +<name>'")
    captions: str = Field(description="caption store (Parquet: image_id, caption, model_id, prompt_sha256)")
    top_n: int = Field(20, ge=2)
    weight: float = Field(0.5, ge=0, le=1)
    dense_weight: float = Field(1.0, ge=0, description="cosine of the text trunk's shared features (BGE-M3 dense)")
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
    every expert into one matrix of concatenated expert blocks (geomoe.retrieval.index), plus FAISS indexes."""

    output_dir: str
    checkpoint: str | None = Field(None, description="None = the checkpoint this job trained")
    split: Literal["test", "train"] = "test"
    dtype: Literal["float16", "float32"] = "float16"
    faiss: list[Literal["flat", "ivf", "hnsw"]] = Field(default_factory=list)
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=2)


class EngineSpec(Strict):
    """A generation engine (geomoe.engines): ``transformers`` locally; ``http`` and ``vllm`` through ray.data.llm
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
    prompts: str | None = Field(None, description="prompt file; None = the built-in refine_v1")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(40, ge=1)


class CaptionSpec(Strict):
    """Gallery captioning for CGRS (stage ``caption``): every image of a prepared split, once, into a caption
    store that ``eval.rerank[].captions`` can name. ``engine.model``: a chat VLM (any engine) or, with the
    transformers engine, also an image-to-text model that takes no prompt (VisionEncoderDecoder)."""

    engine: EngineSpec
    output: str = Field(description="caption store to write (Parquet)")
    prompts: str | None = Field(None, description="prompt file; None = the built-in caption_v1")
    split: Literal["test", "train"] = "test"
    max_words: int = Field(60, ge=1)


class ServeCaptionerSpec(Strict):
    """The re-ranker's VLM for gallery images missing from the caption store: ``transformers`` (a local model in
    a Serve deployment) or ``http`` (an OpenAI-compatible server, e.g. a ``ray.serve.llm`` app beside it)."""

    engine: EngineSpec
    prompts: str | None = Field(None, description="prompt file; None = the built-in caption_v1")
    max_words: int = Field(60, ge=1)

    @field_validator("engine")
    @classmethod
    def _served_kinds(cls, engine: EngineSpec) -> EngineSpec:
        if engine.kind == "vllm":
            raise ValueError("serve vLLM with ray.serve.llm and point an http engine at it (serve/production.yaml)")
        return engine


class ServeSpec(Strict):
    """The ``args`` of the retriever Serve application (``geomoe.serving.app:build_app``)."""

    index: str = Field(description="index folder written by the 'index' stage")
    checkpoint: str | None = Field(None, description="PE-MoE checkpoint; None = the one the index was built with")
    token: str | None = Field(None, description="bearer token required on every request but /healthz")
    token_env: str | None = Field(None, description="environment variable holding the token (keeps it out of files)")
    rerank: RerankSpec | None = Field(None, description="CGRS over the first stage's top_n; enables rerank: true")
    captioner: ServeCaptionerSpec | None = Field(None, description="captions images the store lacks (needs rerank)")
    localizer: str | None = Field(None, description="SMGeo checkpoint; enables POST /localize")

    @model_validator(mode="after")
    def _consistent(self) -> ServeSpec:
        if self.rerank is not None and self.rerank.diversity is not None:
            raise ValueError("rerank.diversity is an offline-evaluation option; the service does not apply it")
        if self.captioner is not None and self.rerank is None:
            raise ValueError("captioner needs rerank (it writes captions for re-ranking)")
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


class ResourcesSpec(Strict):
    address: str | None = Field(None, description="Ray address; None starts a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local cluster")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each training worker needs (node labels, GPU types)"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how training workers are placed; STRICT_SPREAD puts each on its own node"
    )
    data_concurrency: int = Field(2, ge=1, description="parallel Ray Data tasks for CPU stages")


def _model_name(value: Any) -> str:
    """The model a ``model`` section describes; a section without ``name`` is PE-MoE (as before SMGeo)."""
    return str(value.get("name", "pe_moe") if isinstance(value, dict) else getattr(value, "name", "pe_moe"))


AnyModelSpec = Annotated[
    Annotated[ModelSpec, Tag("pe_moe")] | Annotated[SMGeoModelSpec, Tag("smgeo")], Discriminator(_model_name)
]

# The spec sections a trained stage depends on (see JobSpec.fingerprint).
TRAINING_SECTIONS = ("seed", "data", "preprocess", "refine", "model", "train")
# train fields that only stage 2 (and its mining) reads: changing them keeps a finished stage 1
STAGE2_FIELDS = frozenset(
    {"stage2_epochs", "stage2_contrastive_weight", "stage2_hard_weight", "stage2_lr_scale", "hard_negatives"}
    | {"mining_chunk", "mining_pool", "semi_hard"}
)
# train fields that mean something to one model only: setting one in the other model's job is an error
MODEL_ONLY_TRAIN_FIELDS = {
    "pe_moe": STAGE2_FIELDS | {"stage1_epochs", "gate_weight", "use_statements"},
    "smgeo": frozenset({"epochs", "augment"}),
}


class StorageSpec(Strict):
    """Which local paths every node of a cluster sees. URIs (s3://, gs://, ...) are shared by nature; a local
    path is shared only when it lies on a mount every node has (NFS, EFS), and a spec must say so: a multi-node
    run with an undeclared local location stops before any work (``geomoe.ray_env.check_shared_storage``)."""

    shared: bool = Field(False, description="every local path in this spec is on a mount all nodes share")
    shared_mounts: list[str] = Field(default_factory=list, description="local path prefixes that all nodes share")

    def is_shared(self, location: str) -> bool:
        if not storage.is_local(location) or self.shared:
            return True
        path = Path(storage.absolute(location))
        return any(path.is_relative_to(Path(storage.absolute(mount))) for mount in self.shared_mounts)


def _credential_problem(value: Any, key: str = "") -> str | None:
    """The dotted key of a URI that carries credentials (user:secret@), if any: they belong in the environment."""
    if isinstance(value, str):
        return key if storage.redact(value) != value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for name, item in items:
        found = _credential_problem(item, f"{key}.{name}" if key else str(name))
        if found:
            return found
    return None


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_root: str = "runs"
    stages: list[Literal["synth", "prepare", "refine", "caption", "train", "index", "track4_submission"]] = [
        "synth",
        "prepare",
        "train",
    ]
    data: DataSpec
    preprocess: PreprocessSpec
    model: AnyModelSpec = Field(default_factory=lambda: ModelSpec())
    train: TrainSpec = Field(default_factory=lambda: TrainSpec())
    eval: EvalSpec = Field(default_factory=lambda: EvalSpec())
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    track4: Track4Spec | None = None
    refine: RefineSpec | None = None
    caption: CaptionSpec | None = None
    index: IndexSpec | None = None
    baselines: dict[str, list[str]] = Field(
        default_factory=dict,
        description="name -> dotted overrides: extra models trained and evaluated on the same data",
    )
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec())

    @model_validator(mode="after")
    def _no_credentials_in_uris(self) -> JobSpec:
        key = _credential_problem(self.model_dump(mode="json"))
        if key:
            raise ValueError(
                f"{key}: a URI carries credentials (user:secret@); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or GOOGLE_APPLICATION_CREDENTIALS) in the environment instead"
            )
        return self

    def locations(self) -> dict[str, str]:
        """Every data and output location of the job, by dotted key (what must be shared on a cluster)."""
        found = {"output_root": self.output_root, "data.root": self.data.root}
        found["preprocess.output_dir"] = self.preprocess.output_dir
        if self.refine:
            found["refine.output_dir"] = self.refine.output_dir
        if self.caption:
            found["caption.output"] = self.caption.output
        if self.index:
            found["index.output_dir"] = self.index.output_dir
        if self.track4:
            found |= {f"track4.{k}": getattr(self.track4, k) for k in ("queries", "gallery", "output_dir")}
        for i, rerank in enumerate(self.eval.rerank):
            found[f"eval.rerank.{i}.captions"] = rerank.captions
        return found

    @model_validator(mode="after")
    def _synth_needs_source(self) -> JobSpec:
        if "synth" in self.stages and self.data.synthesize is None:
            raise ValueError("stage 'synth' needs data.synthesize")
        if "refine" in self.stages and self.refine is None:
            raise ValueError("stage 'refine' needs a refine section (engine, output_dir)")
        if "caption" in self.stages and self.caption is None:
            raise ValueError("stage 'caption' needs a caption section (engine, output)")
        if "index" in self.stages and self.index is None:
            raise ValueError("stage 'index' needs an index section (output_dir)")
        return self

    @model_validator(mode="after")
    def _train_fields_fit_model(self) -> JobSpec:
        # compared with the defaults, not model_fields_set: a re-validated dump sets every field
        changed = {f for f, info in TrainSpec.model_fields.items() if getattr(self.train, f) != info.default}
        for model, fields in MODEL_ONLY_TRAIN_FIELDS.items():
            misplaced = sorted(fields & changed)
            if model != self.model.name and misplaced:
                raise ValueError(
                    f"train.{misplaced[0]} applies to {model} jobs, and this job's model is {self.model.name}"
                )
        if self.model.name == "smgeo" and (self.baselines or self.track4):
            raise ValueError("baselines and track4 are PE-MoE sections; SMGeo evaluates its own baselines")
        return self

    @property
    def pe_moe(self) -> ModelSpec:
        """The model section of a PE-MoE job (an error for any other model)."""
        if not isinstance(self.model, ModelSpec):
            raise ValueError(f"job {self.name!r} trains {self.model.name}, not pe_moe")
        return self.model

    @property
    def smgeo(self) -> SMGeoModelSpec:
        """The model section of an SMGeo job (an error for any other model)."""
        if not isinstance(self.model, SMGeoModelSpec):
            raise ValueError(f"job {self.name!r} trains {self.model.name}, not smgeo")
        return self.model

    def baseline(self, name: str) -> JobSpec:
        """This spec with a baseline's overrides applied, on the same data.

        A baseline that changes ``preprocess`` (say, ``preprocess.refine=none``) is prepared into its own folder,
        ``<output_dir>-<name>``, unless its overrides name one.
        """
        overrides = self.baselines[name]
        raw = apply_overrides(self.model_dump(mode="json"), overrides, f"baselines.{name}")
        raw["baselines"] = {}
        own_dir = any(o.startswith("preprocess.output_dir=") for o in overrides)
        if raw["preprocess"] != self.preprocess.model_dump(mode="json") and not own_dir:
            raw["preprocess"]["output_dir"] = f"{self.preprocess.output_dir.rstrip('/')}-{name}"
        return parse_spec(JobSpec, raw, f"baselines.{name}")

    def with_absolute_paths(self, base: str | Path | None = None) -> JobSpec:
        """Local paths made absolute against ``base`` (default: the working directory), once, at the edge.

        Ray workers do not share the driver's working directory. Hub ids and pretrained tags stay as they are:
        a model source counts as local when it exists or when ``model.tiny`` will build it there.
        """
        root = Path(base or Path.cwd()).resolve()
        absolute = lambda p: storage.absolute(p, root) if p else p  # noqa: E731  (URIs stay as they are)
        raw = self.model_dump(mode="json")
        raw["output_root"] = absolute(raw["output_root"])
        raw["data"]["root"] = absolute(raw["data"]["root"])
        raw["preprocess"]["output_dir"] = absolute(raw["preprocess"]["output_dir"])
        if raw.get("track4"):
            for key in ("queries", "gallery", "output_dir", "checkpoint"):
                raw["track4"][key] = absolute(raw["track4"][key])
        if raw.get("refine"):
            raw["refine"]["output_dir"] = absolute(raw["refine"]["output_dir"])
            if raw["refine"]["prompts"]:
                raw["refine"]["prompts"] = absolute(raw["refine"]["prompts"])
        for section in ("refine", "caption"):
            if raw.get(section) and self._local_engine_model(raw[section]["engine"], root):
                raw[section]["engine"]["model"] = absolute(raw[section]["engine"]["model"])
        if raw.get("caption"):
            raw["caption"]["output"] = absolute(raw["caption"]["output"])
            if raw["caption"]["prompts"]:
                raw["caption"]["prompts"] = absolute(raw["caption"]["prompts"])
        if raw.get("index"):
            raw["index"]["output_dir"] = absolute(raw["index"]["output_dir"])
            if raw["index"]["checkpoint"]:
                raw["index"]["checkpoint"] = absolute(raw["index"]["checkpoint"])
        for rerank in raw["eval"]["rerank"]:
            rerank["captions"] = absolute(rerank["captions"])
        if isinstance(self.model, SMGeoModelSpec):
            backbone = raw["model"]["backbone"]
            if backbone["pretrained"]:
                backbone["pretrained"] = absolute(backbone["pretrained"])
            return JobSpec.model_validate(raw)
        tiny = self.model.tiny is not None
        text, image = raw["model"]["text"], raw["model"]["image"]
        if tiny or storage.exists(storage.absolute(text["source"], root)):
            text["source"] = absolute(text["source"])
        if image["pretrained"] and (tiny or storage.is_file(storage.absolute(image["pretrained"], root))):
            image["pretrained"] = absolute(image["pretrained"])
        return JobSpec.model_validate(raw)

    @staticmethod
    def _local_engine_model(engine: dict[str, Any], root: Path) -> bool:
        """A served (http) model is a name; otherwise a model is local when it exists or ``tiny`` builds it."""
        return engine["kind"] != "http" and (engine["tiny"] or storage.exists(storage.absolute(engine["model"], root)))

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the resolved spec, or of only the named top-level ``sections``.

        Results are keyed on what produced them: a trained stage on TRAINING_SECTIONS, so changing, say,
        eval.ks or resources re-evaluates without retraining.
        """
        dump = self.model_dump(mode="json")
        blob = json.dumps({k: dump[k] for k in sections} if sections else dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stage_fingerprint(self, stage: int) -> str:
        """What a trained stage depends on: TRAINING_SECTIONS, less STAGE2_FIELDS for stage 1 (so tuning
        stage 2 reuses a finished stage 1)."""
        dump = self.model_dump(mode="json")
        blob = {k: dump[k] for k in TRAINING_SECTIONS}
        if stage == 1:
            blob["train"] = {k: v for k, v in blob["train"].items() if k not in STAGE2_FIELDS}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


class SearchSpec(Strict):
    """How one swept parameter varies: exactly one of ``grid`` (every value), ``choice`` (sampled),
    ``uniform`` or ``loguniform`` ([low, high], sampled)."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchSpec:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None and (bounds[0] >= bounds[1] or (name == "loguniform" and bounds[0] <= 0)):
                raise ValueError(f"{name} needs [low, high] with low < high (and low > 0 for loguniform)")
        if self.grid == [] or self.choice == []:
            raise ValueError("grid and choice need at least one value")
        return self


class AshaSpec(Strict):
    """Early stopping of poor trials (ASHA) on a metric every epoch reports (SMGeo: val_acc50)."""

    max_t: int = Field(ge=1, description="epochs of the longest trial")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class PaperRow(Strict):
    """A published row: the swept values it corresponds to, and its numbers (metric name -> value)."""

    label: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float]


class PaperSpec(Strict):
    source: str = Field(description="where the numbers come from, e.g. 'SMGeo Table II (val)'")
    rows: list[PaperRow]


class SweepVariant(Strict):
    """The 2-core variant of a sweep (``--quickstart``): another base job and overrides; what else it gives
    (variants, params, num_samples, scheduler, max_concurrent) replaces the sweep's."""

    base: str
    overrides: list[str] = Field(default_factory=list)
    variants: dict[str, list[str]] | None = None
    params: dict[str, SearchSpec] | None = None
    num_samples: int | None = Field(None, ge=1)
    scheduler: AshaSpec | None = None
    max_concurrent: int | None = Field(None, ge=1)


class SweepSpec(Strict):
    """A Ray Tune sweep over a job spec: every trial is the base job with its overrides, the trial's variant
    (a named override set) and its parameter values, trained on Ray Train inside the trial.

    Paths (``base``) are relative to the sweep file's folder. ``metric`` is a name the trial reports (see
    geomoe.sweep.trial_metrics); ``report_metrics`` are the table's columns.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str
    overrides: list[str] = Field(default_factory=list)
    variants: dict[str, list[str]] = Field(default_factory=dict, description="named override sets, swept as a grid")
    params: dict[str, SearchSpec] = Field(default_factory=dict)
    metric: str
    mode: Literal["max", "min"] = "max"
    report_metrics: list[str] = Field(min_length=1)
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; optuna: trials")
    scheduler: AshaSpec | None = None
    max_concurrent: int = Field(1, ge=1)
    trial_cpus: float = Field(0.5, gt=0, description="the trial's own process; its Train workers come on top")
    output_root: str = "runs/sweeps"
    paper: PaperSpec | None = None
    quickstart: SweepVariant | None = None

    @model_validator(mode="after")
    def _searcher_fits(self) -> SweepSpec:
        if not self.params and not self.variants:
            raise ValueError("a sweep needs params or variants to vary")
        sampled = [k for k, p in self.params.items() if p.grid is None]
        if self.searcher == "grid" and sampled:
            raise ValueError(f"searcher grid takes grid values only; {sampled} are sampled: use searcher optuna")
        if self.searcher == "optuna" and (self.variants or len(sampled) < len(self.params)):
            raise ValueError("searcher optuna cannot take grid values or variants (Tune's OptunaSearch limit)")
        swept_data = [k for k in self.params if k.split(".")[0] in ("data", "preprocess")]
        if swept_data:
            raise ValueError(f"sweep data or preprocess through variants, not params: {swept_data}")
        return self


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a raw spec dict. Values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(source, item, "override must look like dotted.key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            raise SpecError(source, key, f"override value is not valid YAML: {err}") from err
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(source, ".".join(parts[: depth + 1]), "is not a section; cannot set a key in it")
            node = child
        node[parts[-1]] = value
    return raw


SpecT = TypeVar("SpecT", bound=BaseModel)


def _first_error(err: ValidationError) -> tuple[str, str]:
    detail = err.errors()[0]
    loc = [str(part) for part in detail["loc"]]
    if loc[:1] == ["model"] and loc[1:2] and loc[1] in ("pe_moe", "smgeo"):
        del loc[1]  # pydantic inserts the union's tag; the user wrote model.<key>
    return ".".join(loc), detail["msg"]


def parse_spec(model: type[SpecT], raw: Any, source: str, overrides: list[str] | None = None) -> SpecT:
    """Validate a raw mapping as ``model``; raise SpecError naming ``source`` and the first bad key."""
    if not isinstance(raw, dict):
        raise SpecError(source, "", f"the top level must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [], source)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        key, reason = _first_error(err)
        more = err.error_count() - 1
        raise SpecError(source, key, reason + (f" (and {more} more errors)" if more else "")) from err


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(raw: Any, source: str, key: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in string values from the environment (one variable, such
    as GEOMOE_STORAGE, points every job, sweep and serve config at the cluster's storage). An unset variable
    without a default is an error naming the key."""
    if isinstance(raw, dict):
        return {k: expand_env(v, source, f"{key}.{k}" if key else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_env(v, source, f"{key}.{i}" if key else str(i)) for i, v in enumerate(raw)]
    if not isinstance(raw, str):
        return raw

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise SpecError(source, key, f"${{{name}}} is not set in the environment (or write ${{{name}:-default}})")
        return default

    return _ENV_REFERENCE.sub(value, raw)


def load_yaml(path: str | Path) -> Any:
    """A YAML spec file (a path or URI), with ``${NAME}`` environment references expanded."""
    if not storage.is_file(path):
        raise SpecError(str(path), "", "file not found")
    try:
        raw = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as err:
        raise SpecError(str(path), "", f"not valid YAML: {err}") from err
    return expand_env(raw, str(path))


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    return parse_spec(JobSpec, load_yaml(path), str(path), overrides)
