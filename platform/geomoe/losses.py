"""Training losses: PE-MoE (stage 1: contrastive; stage 2: + mined hard negatives; gate: routing CE) and SMGeo
(targets Eq. 14-17, focal heatmap Eq. 19, L1 box Eq. 20, gate entropy Eq. 22, total Eq. 18)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from geomoe import collectives
from geomoe.config.smgeo import SMGeoLossSpec

if TYPE_CHECKING:
    from geomoe.models.pe_moe import PEMoEOutput
    from geomoe.models.smgeo import SMGeoOutput


class _GatherRows(torch.autograd.Function):
    """All workers' rows in rank order; the backward sums every worker's gradient of the whole gathered tensor
    (one all-reduce, which gloo has too) and keeps this worker's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], collectives.rank()
        return collectives.all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = collectives.all_reduce_sum(grad.contiguous())
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every DDP worker's rows of ``x`` (equal row counts), concatenated in rank order, with gradient into each
    worker's own rows (open_clip's gather-with-grad); ``x`` itself outside torch.distributed.

    A loss that averages over this worker's rows against the gathered ones, averaged by DDP over the workers,
    has exactly the gradient of the same loss on the concatenated global batch in one process."""
    if collectives.world_size() == 1:
        return x
    if x.requires_grad:
        gathered: torch.Tensor = _GatherRows.apply(x)
        return gathered
    return collectives.all_gather_cat(x)


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


def smgeo_targets(
    boxes_B4: torch.Tensor, feature_hw: tuple[int, int], reference_hw: tuple[int, int], sigma_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmap (B, h, w), positive cell (B,) as a flat index, box target (B, 4) = (dx, dy, w, h) in cells.

    Boxes are xyxy in reference input pixels. Centre and size on the feature map: Eq. 14 and 17; offsets from
    the centre's cell: Eq. 16. The Gaussian of Eq. 15 is evaluated at cell indices around the centre's cell,
    so that exactly one cell per image is a positive (value 1) for the focal loss of Eq. 19; its sigma grows
    with the box (sigma_ratio * sqrt(w * h), at least half a cell).
    """
    h, w = feature_hw
    sx, sy = w / reference_hw[1], h / reference_hw[0]
    x1, y1, x2, y2 = boxes_B4.float().unbind(dim=1)
    cx, cy = (x1 + x2) / 2 * sx, (y1 + y2) / 2 * sy
    col, row = cx.floor().clamp(0, w - 1), cy.floor().clamp(0, h - 1)
    bw, bh = (x2 - x1) * sx, (y2 - y1) * sy
    sigma = (sigma_ratio * (bw * bh).clamp_min(0).sqrt()).clamp_min(0.5)
    ys = torch.arange(h, device=boxes_B4.device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(w, device=boxes_B4.device, dtype=torch.float32)[None, None, :]
    d2 = (xs - col[:, None, None]) ** 2 + (ys - row[:, None, None]) ** 2
    heat = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    positive = (row * w + col).long()
    return heat, positive, torch.stack([cx - col, cy - row, bw, bh], dim=1)


def focal_heatmap_loss(
    logits_Bhw: torch.Tensor, heat_Bhw: torch.Tensor, positive_B: torch.Tensor, gamma: float, beta: float
) -> torch.Tensor:
    """Eq. 19: penalty-reduced focal loss, normalised by the number of positives (one per image)."""
    batch = logits_Bhw.shape[0]
    logits, heat = logits_Bhw.reshape(batch, -1).float(), heat_Bhw.reshape(batch, -1)
    is_pos = torch.zeros_like(heat, dtype=torch.bool)
    is_pos[torch.arange(batch), positive_B] = True
    p = torch.sigmoid(logits)
    pos = (1 - p) ** gamma * F.logsigmoid(logits)
    neg = (1 - heat) ** beta * p**gamma * F.logsigmoid(-logits)
    return -torch.where(is_pos, pos, neg).sum() / batch


def smgeo_objective(
    out: SMGeoOutput, boxes_B4: torch.Tensor, reference_hw: tuple[int, int], loss: SMGeoLossSpec
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 18: loss.heatmap * L_hm + loss.box * L_bbox + loss.entropy * L_entropy.

    L_entropy is the mean over GMoE layers and cells of sum_i g_i log g_i (Eq. 22 without its lambda, which
    is applied here once): minimising it raises the gate entropy of Eq. 21, which keeps routing from collapsing.
    """
    logits = out.heatmap_logits
    batch, h, w = logits.shape
    heat, positive, target_B4 = smgeo_targets(boxes_B4, (h, w), reference_hw, loss.sigma_ratio)
    l_hm = focal_heatmap_loss(logits, heat, positive, loss.focal_gamma, loss.focal_beta)
    pred_B4 = out.box.reshape(batch, 4, -1)[torch.arange(batch), :, positive].float()
    l_box = (pred_B4 - target_B4).abs().sum() / batch  # Eq. 20, N_pos = B
    l_ent = out.neg_entropy.float()
    total = loss.heatmap * l_hm + loss.box * l_box + loss.entropy * l_ent
    parts = {"heatmap": float(l_hm.detach()), "box": float(l_box.detach()), "neg_entropy": float(l_ent.detach())}
    return total, parts
