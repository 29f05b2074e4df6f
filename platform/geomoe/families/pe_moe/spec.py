"""PE-MoE's spec sections: frozen text and image trunks, one expert head per platform group, a gate, and the
two-stage training settings (the PE-MoE paper; docs/protocols.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Literal, Self

from pydantic import Field, model_validator

from geomoe.core.config.family import FamilyModelSpec, JobSection, TrainSpec
from geomoe.core.config.parsing import Strict
from geomoe.core.platforms import Platform


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
    """Build random tiny models at text.source / image.pretrained (demo and tests; no downloads): when absent or
    left by an older geomoe; reused when their recorded recipe is this job's; refused when it is another's."""

    text_hidden: int = Field(64, ge=8)
    text_layers: int = Field(4, ge=2)
    text_heads: int = Field(2, ge=1)
    seed: int = Field(
        0, description="the backbones' own seed: like a pretrained model, the same for every training seed"
    )


class PEMoEModelSpec(FamilyModelSpec):
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
    def _experts_partition_platforms(self) -> PEMoEModelSpec:
        owned = [p for e in self.experts for p in e.platforms]
        if len(owned) != len(set(owned)):
            raise ValueError("experts: a platform may belong to one expert only (the gate routes to exactly one)")
        if self.fusion == "unified" and len(self.experts) != 1:
            raise ValueError("fusion 'unified' trains one head on all data: give exactly one expert")
        if self.tiny is not None and self.image.pretrained is None:
            raise ValueError("image.pretrained: model.tiny needs it: the file to write the tiny image weights to")
        if self.gate_top_k is not None and self.gate_top_k > len(self.experts):
            raise ValueError(f"gate_top_k {self.gate_top_k} exceeds the {len(self.experts)} experts")
        return self

    def with_absolute_paths(self, absolute: Callable[[str], str], is_local: Callable[[str], bool]) -> Self:
        """The text model folder and the image weights, when local (``tiny`` builds them there: local)."""
        tiny = self.tiny is not None
        text = self.text
        if tiny or is_local(text.source):
            text = text.model_copy(update={"source": absolute(text.source)})
        image = self.image
        if image.pretrained and (tiny or is_local(image.pretrained)):
            image = image.model_copy(update={"pretrained": absolute(image.pretrained)})
        return self.model_copy(update={"text": text, "image": image})

    def tiny_models_in(self, tag: str) -> list[str]:
        if self.tiny is None or self.image.pretrained is None:
            return []
        text, image = PurePosixPath(self.text.source), PurePosixPath(self.image.pretrained)
        return [
            f"model.text.source={text.parent / tag / text.name}",
            f"model.image.pretrained={image.parent / tag / image.name}",
        ]

    def expert_of(self) -> dict[str, int]:
        """platform name -> expert index."""
        return {p.value: k for k, e in enumerate(self.experts) for p in e.platforms}


# train fields that only stage 2 (and its mining) reads: changing them keeps a finished stage 1
STAGE2_FIELDS = frozenset(
    {"stage2_epochs", "stage2_contrastive_weight", "stage2_hard_weight", "stage2_lr_scale", "hard_negatives"}
    | {"mining_chunk", "mining_pool", "semi_hard", "mining_scope"}
)


class PEMoETrainSpec(TrainSpec):
    """Two stages: contrastive on positive pairs, then with mined hard negatives (PE-MoE sec. 3.3)."""

    stage1_epochs: int = Field(5, ge=1, description="stage 2 starts from stage 1's checkpoint: at least one epoch")
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
    mining_scope: Literal["gallery", "platform"] = Field(
        "gallery",
        description="gallery: the paper's, the model (Eq. 1) tested on the whole training set; platform: ours, "
        "each expert's own score over its own platform's images",
    )
    use_statements: bool = Field(True, description="train on a random short statement half of the time")
    batching: Literal["expert", "mixed"] = Field(
        "expert",
        description="expert: every global batch from one expert's subset D_k (the paper trains expert k on D_k; "
        "its in-batch negatives are the whole global batch); mixed: batches mix platforms, each expert "
        "gets its rows of each batch",
    )
    batch_order: Literal["proportional", "round_robin"] = Field(
        "proportional", description="expert batching: experts' turns interleaved in proportion, or in rotation"
    )

    def fields_ignored_by_stage(self, stage: int) -> frozenset[str]:
        return STAGE2_FIELDS if stage == 1 else frozenset()


class Track4Spec(JobSection):
    """The ``track4`` section (stage ``track4_submission``): RoboSense Track 4 submission, a query file and a
    gallery folder in the challenge layout."""

    path_fields = ("queries", "gallery", "output_dir", "checkpoint")
    shared_fields = ("queries", "gallery", "output_dir")

    queries: str
    gallery: str
    output_dir: str
    checkpoint: str | None = Field(None, description="None = the checkpoint this job trained")


class IndexSpec(JobSection):
    """The ``index`` section (stage ``index``): the serving index of a PE-MoE checkpoint, every image of a prepared
    split embedded by every expert into one matrix of concatenated expert blocks (geomoe.families.pe_moe.index),
    plus FAISS indexes."""

    path_fields = ("output_dir", "checkpoint")
    shared_fields = ("output_dir",)

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
