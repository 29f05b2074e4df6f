"""SMGeo's training losses: targets (Eq. 14-17), focal heatmap (Eq. 19), L1 box (Eq. 20), gate entropy (Eq. 22),
total (Eq. 18)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from geomoe.families.smgeo.spec import SMGeoLossSpec

if TYPE_CHECKING:
    from geomoe.families.smgeo.model import SMGeoOutput


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
