"""Training losses of PE-MoE (stage 1: contrastive; stage 2: + mined hard negatives; gate: routing CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_info_nce(
    t_BD: torch.Tensor, v_BD: torch.Tensor, scale: torch.Tensor, groups_B: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives, where every pair of the same group counts as a positive.

    Groups are buildings: two captions of one building, or two images of it, are not negatives of each other
    (a plain diagonal target would push apart views the building-level protocol calls correct).
    """
    logits = scale * t_BD @ v_BD.T
    same = (groups_B[:, None] == groups_B[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    t2i = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    i2t = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (t2i + i2t) / 2


def hard_negative_loss(
    t_BD: torch.Tensor, v_pos_BD: torch.Tensor, v_neg_BMD: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the positive against the query's own M mined hard negatives."""
    pos = (t_BD * v_pos_BD).sum(dim=-1, keepdim=True)
    neg = torch.einsum("bd,bmd->bm", t_BD, v_neg_BMD)
    logits = scale * torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def gate_loss(gate_logits_BK: torch.Tensor, expert_B: torch.Tensor) -> torch.Tensor:
    """The gate learns to route a query to the expert of its image's platform."""
    return F.cross_entropy(gate_logits_BK, expert_B)
