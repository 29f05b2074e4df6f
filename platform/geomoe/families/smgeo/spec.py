"""SMGeo's spec sections: Swin backbone with grid-level sparse MoE, query-guided fusion, anchor-free head, the
loss weights of Eq. 18, and one-stage training (the SMGeo paper; docs/protocols.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Self

from pydantic import Field, model_validator

from geomoe.core.config.family import FamilyModelSpec, TrainSpec
from geomoe.core.config.parsing import Strict


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
    """Grid-level sparse mixture of experts in the FFN of chosen Swin blocks (SMGeo Eq. 7-9).

    The defaults reproduce the paper's parameter counts (Table II: 29.13M without GMoE, +0.74M per expert):
    each block keeps its dense FFN and adds the top-k of E experts of hidden size dim / 2 from one pool per stage
    (``dense_path: true``, ``expert_mlp_ratio: 0.5``). ``dense_path: false`` with ``expert_mlp_ratio: null``
    replaces the FFN by full-size experts upcycled from it (our earlier design, 58.5M at E = 6).
    """

    experts: int = Field(6, ge=1)
    top_k: int = Field(2, ge=1)
    grid: list[int] = Field([8, 8], min_length=2, max_length=2, description="g_h, g_w cells per feature map")
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise on router logits while training")
    blocks: list[BlockChoice] = Field(
        ["none", "even", "even", "even"], description="per stage: none | even | all | explicit block indices"
    )
    share_per_stage: bool = Field(True, description="one expert pool per stage, a router per block")
    expert_mlp_ratio: float | None = Field(0.5, gt=0, description="expert hidden size / dim; None = the FFN's")
    dense_path: bool = Field(True, description="keep the block's dense FFN beside the experts: y = FFN(x) + MoE(x)")
    routers: Literal["per_view", "shared"] = Field(
        "per_view", description="Fig. 4's view-specific routers (query, reference), or one router for both views"
    )

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


class SMGeoModelSpec(FamilyModelSpec):
    """SMGeo: shared Swin + GMoE for query and reference, query-guided fusion, anchor-free head."""

    name: Literal["smgeo"] = "smgeo"
    backbone: SwinSpec = Field(default_factory=lambda: SwinSpec())
    gmoe: GMoESpec = Field(default_factory=lambda: GMoESpec())
    query_size: int = Field(1024, ge=16, description="drone query side after resizing")
    reference_size: int = Field(1024, ge=16, description="satellite tile side after resizing")
    click: Literal["prompt", "channel"] = Field(
        "prompt",
        description="the click as an encoded prompt fused with the query (Fig. 4, the paper's) or as a 4th input "
        "channel of Gaussian heat (the authors' public code)",
    )
    click_sigma: float = Field(0.03, gt=0, description="click heat Gaussian sigma / query side")
    query_pool: Literal["click", "mean"] = Field(
        "mean", description="query vector for Eq. 10: the paper's plain average, or our click-heat-weighted one"
    )
    head_channels: int = Field(192, ge=4, description="not stated in the paper; 192 reproduces its #P")
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

    def with_absolute_paths(self, absolute: Callable[[str], str], is_local: Callable[[str], bool]) -> Self:
        pretrained = self.backbone.pretrained
        if not pretrained:
            return self
        backbone = self.backbone.model_copy(update={"pretrained": absolute(pretrained)})
        return self.model_copy(update={"backbone": backbone})

    def moe_blocks(self) -> list[list[int]]:
        """Block indices that get a GMoE, per stage."""
        picks = {"none": lambda d: [], "even": lambda d: list(range(0, d, 2)), "all": lambda d: list(range(d))}
        return [
            sorted(set(c)) if isinstance(c, list) else picks[c](d)
            for c, d in zip(self.gmoe.blocks, self.backbone.depths, strict=True)
        ]


class SMGeoTrainSpec(TrainSpec):
    """One stage; the best epoch by validation acc@0.5 is kept."""

    epochs: int = Field(25, ge=1)
    augment: bool = Field(True, description="bbox-safe flip and crop of training pairs (never validation)")
