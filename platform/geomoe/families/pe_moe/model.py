"""PE-MoE (pe_moe_paper.md sec. 3.2-3.3): frozen shared trunks, one lightweight head per expert, a gate.

Forward steps:
1. text trunk once -> token states; the shared text feature is their CLS state (gate input, t_shared);
2. each expert's text tail (its own copy of the last layers) -> CLS -> text projection -> t_k, normalised;
3. image trunk once -> token states; each expert's image tail -> class token -> visual projection -> v_k;
4. gate: 2-layer MLP on t_shared -> softmax over experts -> g(q) (optionally only the top-k kept);
5. Eq. 1: S(q, I) = sum_k g_k(q) * cos(t_k(q), v_k(I)).
Fusion modes (Table 1 ablation): ``unified`` (one head on all data), ``static`` (fixed weights), ``dynamic``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomoe.core.models.encoders import ImageTail, ImageTrunk, TextTail, TextTrunk, masked_mean

Fusion = Literal["unified", "static", "dynamic"]
Array = TypeVar("Array", np.ndarray, torch.Tensor)


class PEMoEOutput(NamedTuple):
    """One training step's encodings, each row by its own platform's expert."""

    t_shared: torch.Tensor  # (B, H) the shared text feature (the gate's input)
    t: torch.Tensor  # (B, D) text embeddings, normalised
    gate_logits: torch.Tensor  # (B, K)
    scale: torch.Tensor  # () the contrastive logit scale
    v: torch.Tensor  # (B, D) image embeddings, normalised
    v_neg: torch.Tensor | None  # (B, M, D) the mined negatives' embeddings (stage 2), else None


class ExpertHead(nn.Module):
    """One platform expert: own text tail, own image tail, own projections into the shared space."""

    def __init__(self, text_tail: TextTail, image_tail: ImageTail, text_width: int, image_width: int, dim: int):
        super().__init__()
        self.text_tail, self.image_tail = text_tail, image_tail
        self.text_proj: nn.Module = nn.Identity() if text_width == dim else nn.Linear(text_width, dim, bias=False)
        self.visual_proj = nn.Linear(image_width, dim, bias=False)

    def text(self, hidden: torch.Tensor, mask: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_tail(hidden, mask, attention_mask)), dim=-1)

    def image(self, tokens: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        return F.normalize(self.visual_proj(self.image_tail(tokens, rope)), dim=-1)


class PEMoE(nn.Module):
    def __init__(
        self,
        text_trunk: TextTrunk,
        image_trunk: ImageTrunk,
        num_experts: int,
        embed_dim: int = 1024,
        fusion: Fusion = "dynamic",
        gate_hidden: int = 512,
        gate_top_k: int | None = None,
        static_weights: list[float] | None = None,
        temperature: float = 0.07,
        text_pool: str = "cls",
        image_pool: str = "token",
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        if fusion == "unified" and num_experts != 1:
            raise ValueError("fusion 'unified' trains one head on all data: use exactly one expert")
        if gate_top_k is not None and not 1 <= gate_top_k <= num_experts:
            raise ValueError(f"gate_top_k must be in 1..{num_experts}")
        self.text_trunk: TextTrunk = text_trunk
        self.image_trunk: ImageTrunk = image_trunk
        for param in [*text_trunk.parameters(), *image_trunk.parameters()]:
            param.requires_grad_(False)
        self.experts = nn.ModuleList(
            ExpertHead(
                text_trunk.make_tail(text_pool),
                image_trunk.make_tail(image_pool),
                text_trunk.hidden_size,
                image_trunk.width,
                embed_dim,
            )
            for _ in range(num_experts)
        )
        hidden = text_trunk.hidden_size
        self.gate = nn.Sequential(nn.Linear(hidden, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, num_experts))
        weights = torch.tensor(static_weights or [1.0 / num_experts] * num_experts)
        if weights.numel() != num_experts or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"static_weights must be {num_experts} non-negative numbers with a positive sum")
        self.register_buffer("static_weights", weights / weights.sum())
        # Fixed by default: at initialisation wrong but confident logits make the optimiser shrink a learnable
        # scale until every logit is equal (loss = log n, no gradient), which small per-expert batches hit.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.fusion, self.gate_top_k, self.text_pool, self.embed_dim = fusion, gate_top_k, text_pool, embed_dim

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def heads(self) -> list[ExpertHead]:
        return cast(list[ExpertHead], list(self.experts))

    def train(self, mode: bool = True) -> PEMoE:
        super().train(mode)
        self.text_trunk.eval()  # frozen: no dropout, no statistics updates
        self.image_trunk.eval()
        return self

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_shared (B, H), t_KBD (K, B, D) normalised). The trunk runs once, without gradient."""
        with torch.no_grad():
            hidden, mask = self.text_trunk(input_ids, attention_mask)
        t = torch.stack([expert.text(hidden, mask, attention_mask) for expert in self.heads()])
        return self._shared(hidden, attention_mask), t

    @torch.no_grad()
    def dense_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) the frozen text model's own sentence embedding, normalised: the trunk, then the original (frozen)
        last layers, pooled like the experts (CLS: BGE-M3's dense vector), L2-normalised. CGRS compares queries
        with captions in this space; the trunk's shared state (the gate's input) stops ``tail_layers`` early."""
        hidden, mask = self.text_trunk(input_ids, attention_mask)
        for layer in self.text_trunk.tail_template:
            hidden = layer(hidden, mask)
        return F.normalize(self._shared(hidden, attention_mask).float(), dim=-1)

    def _shared(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The gate's input: the trunk's pooled text state (B, H)."""
        return hidden[:, 0] if self.text_pool == "cls" else masked_mean(hidden, attention_mask)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """v_KND (K, N, D) normalised. The trunk runs once, without gradient."""
        with torch.no_grad():
            tokens, rope = self.image_trunk(images)
        return torch.stack([expert.image(tokens, rope) for expert in self.heads()])

    def gate_logits(self, shared_BH: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.gate(shared_BH))

    def gate_weights(self, shared_BH: torch.Tensor) -> torch.Tensor:
        """g (B, K): softmax of the gate (dynamic), the fixed weights (static), or ones (unified)."""
        batch = shared_BH.shape[0]
        if self.fusion != "dynamic":
            return cast(torch.Tensor, self.static_weights).expand(batch, -1)
        weights = self.gate_logits(shared_BH).softmax(dim=-1)
        if self.gate_top_k is not None and self.gate_top_k < self.num_experts:
            top = weights.topk(self.gate_top_k, dim=-1)
            weights = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor,
        expert_B: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> PEMoEOutput:
        """One training step's encodings (called through DDP, which needs forward() to track parameters).

        Training routes each pair to the expert of its platform only (``expert_B``), so an expert's tails run
        on its own rows and a K-expert step costs about what a one-head step costs. Returns t_shared (B, H),
        t (B, D) and v (B, D) from each row's own expert, gate_logits (B, K), the contrastive scale and, with
        ``negatives`` (B, M, 3, S, S), v_neg (B, M, D): negatives share the positives' trunk call.
        """
        batch = images.shape[0]
        with torch.no_grad():
            hidden, mask = self.text_trunk(input_ids, attention_mask)
            pixels = images if negatives is None else torch.cat([images, negatives.flatten(0, 1)])
            tokens, rope = self.image_trunk(pixels)
        shared = self._shared(hidden, attention_mask)
        m = 0 if negatives is None else negatives.shape[1]
        # image rows: the B positives, then each query's M negatives, all encoded by the query's expert
        image_expert = torch.cat([expert_B, expert_B.repeat_interleave(m)])
        t = torch.zeros(batch, self.embed_dim, device=hidden.device)  # float32 embeddings for the losses
        v = torch.zeros(len(image_expert), self.embed_dim, device=hidden.device)
        for k, expert in enumerate(self.heads()):
            text_rows = (expert_B == k).nonzero(as_tuple=True)[0]
            if len(text_rows):
                encoded = expert.text(hidden[text_rows], _rows(mask, text_rows, batch), attention_mask[text_rows])
                t = t.index_copy(0, text_rows, encoded.to(t.dtype))
            image_rows = (image_expert == k).nonzero(as_tuple=True)[0]
            if len(image_rows):
                v = v.index_copy(0, image_rows, expert.image(tokens[image_rows], rope).to(v.dtype))
        v_neg = None if negatives is None else v[batch:].unflatten(0, (batch, m))
        # the scale is returned from forward so DDP sees every trainable parameter used inside it
        scale = self.logit_scale.exp().clamp(min=1.0, max=100.0)
        return PEMoEOutput(shared, t, self.gate_logits(shared), scale, v[:batch], v_neg)


# Eq. 1, the only place it is written: S(q, n) = sum_k g_k(q) <t_k(q), v_k(n)> (inputs normalised: cosines),
# factored as one inner product between the gated query [g_1 t_1, ..., g_K t_K] and the gallery row
# [v_1n, ..., v_Kn]. Evaluation, the index, the Track 4 submission and serving all score this way;
# the functions take NumPy arrays or torch tensors alike.
def gated_queries(t_KQD: Array, g_QK: Array) -> Array:
    """(Q, K*D) query vectors [g_1 t_1, ..., g_K t_K]."""
    k, q, d = t_KQD.shape
    return cast(Array, (t_KQD * g_QK.T[:, :, None]).swapaxes(0, 1).reshape(q, k * d))


def gallery_rows(v_KND: Array) -> Array:
    """(N, K*D) gallery rows [v_1n, ..., v_Kn] from per-expert embeddings (K, N, D)."""
    k, n, d = v_KND.shape
    return cast(Array, v_KND.swapaxes(0, 1).reshape(n, k * d))


def fused_scores(t_KQD: Array, v_KND: Array, g_QK: Array) -> Array:
    """Eq. 1 for every (query, image): (Q, N)."""
    return cast(Array, gated_queries(t_KQD, g_QK) @ gallery_rows(v_KND).T)


def _rows(mask: Any, rows: torch.Tensor, batch: int) -> Any:
    """The text tail's attention mask for a subset of rows (None and batch-broadcast masks pass through)."""
    if isinstance(mask, torch.Tensor) and mask.dim() > 0 and mask.shape[0] == batch:
        return mask[rows]
    return mask
