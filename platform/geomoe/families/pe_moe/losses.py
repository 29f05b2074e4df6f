"""PE-MoE's training losses: stage 1 contrastive over positive pairs, stage 2 plus mined hard negatives, and the
gate's routing cross-entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from geomoe.core.collectives import gather_rows

if TYPE_CHECKING:
    from geomoe.families.pe_moe.model import PEMoEOutput


def multi_positive_info_nce(
    t_BD: torch.Tensor,
    v_BD: torch.Tensor,
    scale: torch.Tensor,
    groups_B: torch.Tensor,
    everyone: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives, where every pair of the same group counts as a positive.

    Groups are buildings: two captions of one building, or two images of it, are not negatives of each other
    (a plain diagonal target would push apart views the building-level protocol calls correct).
    ``everyone``: (t, v, groups) of the whole global batch (``gather_rows``): this worker's rows are scored
    against all of them, and the loss is the mean over this worker's rows (open_clip's local loss).
    """
    t_all, v_all, groups_all = everyone if everyone is not None else (t_BD, v_BD, groups_B)
    same = (groups_B[:, None] == groups_all[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    t2i = -(targets * (scale * t_BD @ v_all.T).log_softmax(dim=1)).sum(dim=1).mean()
    i2t = -(targets * (scale * v_BD @ t_all.T).log_softmax(dim=1)).sum(dim=1).mean()
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


def pe_moe_objective(
    out: PEMoEOutput,
    expert_B: torch.Tensor,
    building_B: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: float,
    contrastive_weight: float = 1.0,
    hard_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one batch (this worker's rows) and its parts.

    ``out`` holds each row's embeddings from its own expert (``PEMoE.forward``); each expert's contrastive (and,
    in stage 2, hard-negative) loss uses only the pairs of its own platforms, so an expert is trained exclusively
    on its subset and its in-batch negatives come from that subset, across every DDP worker's rows of the step
    (``gather_rows``); the gate learns the routing on every pair. ``building_B``: ids equal across workers.
    """
    parts: dict[str, torch.Tensor] = {}
    zero = out.t.sum() * 0.0
    contrastive, hard = zero, zero
    t_all, v_all = gather_rows(out.t), gather_rows(out.v)
    expert_all, building_all = gather_rows(expert_B), gather_rows(building_B)
    for k in range(out.gate_logits.shape[1]):
        rows = (expert_B == k).nonzero(as_tuple=True)[0]
        everyone = (expert_all == k).nonzero(as_tuple=True)[0]
        if len(rows) and len(everyone) >= 2:
            peers = (t_all[everyone], v_all[everyone], building_all[everyone])
            contrastive = contrastive + multi_positive_info_nce(
                out.t[rows], out.v[rows], scale, building_B[rows], peers
            )
        if hard_weight and out.v_neg is not None and len(rows):
            hard = hard + hard_negative_loss(out.t[rows], out.v[rows], out.v_neg[rows], scale)
    parts["contrastive"], parts["hard_negative"] = contrastive, hard
    parts["gate"] = gate_loss(out.gate_logits, expert_B) if gate_weight else zero
    total = contrastive_weight * contrastive + hard_weight * hard + gate_weight * parts["gate"]
    return total, {name: float(value.detach()) for name, value in parts.items()}
