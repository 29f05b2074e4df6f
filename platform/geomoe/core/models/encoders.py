"""Text and image backbones split into a frozen shared trunk and a trainable tail that experts copy.

Text: an XLM-RoBERTa model loaded the way BGE-M3 is (transformers ``AutoModel`` from a hub id or local
folder; BGE-M3's dense vector is the L2-normalised CLS state of exactly this model). Image: an open_clip
EVA-CLIP vision tower (``EVA02-L-14`` family; a timm Eva inside open_clip's TimmModel), with
``force_image_size`` for 384 px. The trunk is run once per input; each expert runs only its own tail.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomoe.core.errors import ModelError

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"


def masked_mean(hidden_BLH: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real (unpadded) tokens: (B, H)."""
    weights = attention_mask_BL.to(hidden_BLH.dtype).unsqueeze(-1)
    return (hidden_BLH * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TextTrunk(nn.Module):
    """Embeddings and all but the last ``tail_layers`` transformer layers of an XLM-R model."""

    def __init__(self, model: Any, tail_layers: int) -> None:
        super().__init__()
        layers = model.encoder.layer
        if not 0 < tail_layers < len(layers):
            raise ModelError(
                f"model.text.tail_layers must be in 1..{len(layers) - 1} for a {len(layers)}-layer text model"
            )
        self.config = model.config
        self.embeddings = model.embeddings
        self.layers = nn.ModuleList(layers[: len(layers) - tail_layers])
        self.tail_template = nn.ModuleList(layers[len(layers) - tail_layers :])
        self.hidden_size = int(model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Token states (B, L, H) after the trunk, and the 4-D mask the tail layers need."""
        from transformers.masking_utils import create_bidirectional_mask

        hidden = self.embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden, mask

    def make_tail(self, pool: str = "cls") -> TextTail:
        return TextTail(copy.deepcopy(self.tail_template), pool).requires_grad_(
            True
        )  # trainable though the trunk is frozen


class TextTail(nn.Module):
    """An expert's own copy of the last text layers; returns the pooled state (B, H).

    ``pool="cls"`` is BGE-M3's dense vector; ``"mean"`` (over real tokens) suits random tiny models, whose
    untrained CLS state barely varies between texts.
    """

    def __init__(self, layers: nn.ModuleList, pool: str = "cls") -> None:
        super().__init__()
        self.layers, self.pool = layers, pool

    def forward(self, hidden: torch.Tensor, mask: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, mask)
        if self.pool == "cls" or attention_mask is None:
            return hidden[:, 0]
        return masked_mean(hidden, attention_mask)


class ImageTrunk(nn.Module):
    """Patch embedding, positions and all but the last ``tail_blocks`` blocks of a timm Eva."""

    def __init__(self, eva: Any, tail_blocks: int) -> None:
        super().__init__()
        blocks = eva.blocks
        if not 0 < tail_blocks < len(blocks):
            raise ModelError(
                f"model.image.tail_blocks must be in 1..{len(blocks) - 1} for a {len(blocks)}-block image model"
            )
        self.eva = eva  # kept for patch_embed, _pos_embed and norm_pre; its blocks are split below
        self.blocks = nn.ModuleList(blocks[: len(blocks) - tail_blocks])
        self.tail_template = nn.ModuleList(blocks[len(blocks) - tail_blocks :])
        self.width = int(eva.num_features)
        self.eva.blocks = nn.ModuleList()  # the tail lives in the experts, not here
        self.eva.head = nn.Identity()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states (B, T, W) after the trunk and the rotary position embedding the tail blocks need."""
        tokens = self.eva.patch_embed(images)
        tokens, rope = self.eva._pos_embed(tokens)
        tokens = self.eva.norm_pre(tokens)
        for block in self.blocks:
            tokens = block(tokens, rope=rope)
        return tokens, rope

    def make_tail(self, pool: str = "token") -> ImageTail:
        norms = copy.deepcopy(self.eva.norm), copy.deepcopy(self.eva.fc_norm)
        tail = ImageTail(copy.deepcopy(self.tail_template), *norms, pool, int(self.eva.num_prefix_tokens))
        return tail.requires_grad_(True)  # trainable even if the trunk is frozen


class ImageTail(nn.Module):
    """An expert's own copy of the last image blocks and final norms; returns the pooled state (B, W).

    ``pool="token"`` is EVA-CLIP's class token; ``"avg"`` averages patch tokens (for random tiny models).
    """

    def __init__(
        self, blocks: nn.ModuleList, norm: nn.Module, fc_norm: nn.Module, pool: str = "token", prefix: int = 1
    ):
        super().__init__()
        self.blocks, self.norm, self.fc_norm, self.pool, self.prefix = blocks, norm, fc_norm, pool, prefix

    def forward(self, tokens: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens, rope=rope)
        tokens = self.norm(tokens)
        pooled = tokens[:, 0] if self.pool == "token" else tokens[:, self.prefix :].mean(dim=1)
        out: torch.Tensor = self.fc_norm(pooled)
        return out


def register_tiny_architectures() -> None:
    """Register the tiny Eva with timm and its open_clip config (idempotent; every process that builds one)."""
    import open_clip
    from timm.models import is_model, register_model
    from timm.models.eva import _create_eva

    if not is_model("geomoe_eva02_micro"):

        @register_model
        def geomoe_eva02_micro(pretrained: bool = False, **kwargs: Any) -> nn.Module:
            # EVA02's block design (SwiGLU MLP, rotary positions) at test size: width 48, 4 blocks, 8 px patches.
            args = dict(
                img_size=64,
                patch_size=8,
                embed_dim=48,
                depth=4,
                num_heads=3,
                mlp_ratio=4 * 2 / 3,
                swiglu_mlp=True,
                use_rot_pos_emb=True,
                ref_feat_shape=(8, 8),
            )
            return _create_eva("eva02_tiny_patch14_224", pretrained=pretrained, **dict(args, **kwargs))

    if "geomoe-eva02-micro" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def load_text_model(source: str) -> tuple[Any, Any]:
    """(XLM-R model, tokenizer) from a hub id (e.g. BAAI/bge-m3) or a local folder."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, add_pooling_layer=False)
    if model.config.model_type != "xlm-roberta":
        raise ModelError(
            f"model.text.source: {source}: expected an XLM-RoBERTa model (BGE-M3 family), got {model.config.model_type}"
        )
    return model, tokenizer


def load_image_tower(name: str, pretrained: str | None, image_size: int) -> Any:
    """The timm Eva inside an open_clip EVA-CLIP model (text tower dropped). ``pretrained``: tag or file."""
    import open_clip

    register_tiny_architectures()
    model = open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size)
    visual = model.visual
    if not hasattr(visual, "trunk") or not hasattr(visual.trunk, "blocks"):
        raise ModelError(f"model.image.name: {name}: expected an EVA-CLIP model whose vision tower is a timm Eva")
    return visual.trunk
