"""Grid-level sparse mixture of experts (SMGeo Eq. 7-9, gate entropy Eq. 21).

A feature map is divided into G = g_h x g_w cells. A router scores each cell's pooled feature over E experts;
each cell keeps its top-k experts with a softmax over the chosen logits only (Eq. 8), and every token of the
cell is processed by those k experts alone, weighted by the cell's gates (Eq. 9). Dispatch is sparse: tokens
are grouped per expert and each expert runs once on its own group, so compute grows with k, not E (the
authors' public code computes all E experts for every token and then gathers two).

Fig. 4 gives each view its own router ("a view-specific router for top-k expert selection"): a layer holds one
router per view and ``view`` (set by the model before each pass) picks it; the experts are shared by the views.

Forward steps of ``GridMoE``:
1. pool the map into G cells (adaptive average pooling) -> the current view's router logits (B, G, E); add
   Gaussian noise in training;
2. top-k per cell, softmax over the k logits -> gates (B, G, k), expert ids (B, G, k);
3. each token inherits its cell's ids and gates; sparse dispatch per expert; weighted sum;
4. record sum_i p_i log p_i per cell over the router's full softmax over all E experts (the negative of
   Eq. 21's entropy, whose sum runs to k, "the total number of experts" in Eq. 7's notation; gradient into the
   router), and how often each expert was chosen (for monitoring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExpertFFN(nn.Module):
    """One expert: FC -> GELU -> FC (Eq. 6), the same shape as a Swin block's MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out

    @torch.no_grad()
    def zero_output(self) -> None:
        """Output 0 at init: an expert added beside a kept dense FFN leaves the pretrained block unchanged."""
        self.fc2.weight.zero_()
        self.fc2.bias.zero_()

    @torch.no_grad()
    def copy_from(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        """Start from a dense FFN (upcycling); with a smaller hidden size, from its first hidden units."""
        hidden = self.fc1.out_features
        self.fc1.weight.copy_(fc1.weight[:hidden])
        self.fc1.bias.copy_(fc1.bias[:hidden])
        self.fc2.weight.copy_(fc2.weight[:, :hidden])
        self.fc2.bias.copy_(fc2.bias)


def cell_of_tokens(height: int, width: int, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """(H*W,) index of the grid cell each token of an H x W map falls in (row-major cells)."""
    rows = torch.arange(height, device=device) * grid_h // height
    cols = torch.arange(width, device=device) * grid_w // width
    return (rows[:, None] * grid_w + cols[None, :]).reshape(-1)


def sparse_dispatch(
    x_NC: torch.Tensor, experts_NK: torch.Tensor, gates_NK: torch.Tensor, experts: nn.ModuleList
) -> torch.Tensor:
    """sum_j gates[n, j] * experts[experts_NK[n, j]](x[n]), running each expert once on its tokens only."""
    k = experts_NK.shape[1]
    flat = experts_NK.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=len(experts)).tolist()  # one host sync per layer
    grouped = x_NC[token].split(counts)
    outputs = [expert(chunk) for expert, chunk in zip(experts, grouped, strict=True) if chunk.shape[0]]
    weighted = torch.cat(outputs) * gates_NK.reshape(-1)[order, None].to(x_NC.dtype)
    return torch.zeros_like(x_NC).index_add_(0, token, weighted)


def dense_reference(
    x_NC: torch.Tensor, experts_NK: torch.Tensor, gates_NK: torch.Tensor, experts: nn.ModuleList
) -> torch.Tensor:
    """The same sum, computing every expert on every token (the authors' way; for tests and the benchmark)."""
    all_ENC = torch.stack([expert(x_NC) for expert in experts])
    picked_NKC = all_ENC[experts_NK, torch.arange(x_NC.shape[0], device=x_NC.device)[:, None]]
    return (picked_NKC * gates_NK[..., None].to(x_NC.dtype)).sum(dim=1)


class GridMoE(nn.Module):
    """Router over grid cells + a pool of experts (possibly shared with other GridMoE layers of a stage).

    After each forward: ``neg_entropy`` (scalar, mean over images and cells of sum_i p_i log p_i over the full
    router softmax; it carries gradient) and ``usage`` (E,), how many (cell, slot) choices went to each expert
    (no gradient).
    """

    def __init__(
        self,
        dim: int,
        experts: nn.ModuleList,
        top_k: int,
        grid: tuple[int, int],
        noise_std: float = 0.0,
        views: int = 1,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k {top_k} must be between 1 and the {len(experts)} experts")
        self.experts, self.top_k, self.grid, self.noise_std = experts, top_k, grid, noise_std
        self.routers = nn.ModuleList(nn.Linear(dim, len(experts)) for _ in range(views))
        self.view = 0  # which router the next pass uses (one router shared by every view when there is one)
        self.dense = False  # True: compute every expert on every token (reference path; same result)
        self.neg_entropy = torch.zeros(())
        self.usage = torch.zeros(len(experts))

    def cells(self, height: int, width: int) -> tuple[int, int]:
        """The grid for an H x W map: ``grid``, or one token per cell on maps smaller than it."""
        return min(self.grid[0], height), min(self.grid[1], width)

    def route(self, x_BHWC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert ids and gates per grid cell, (B, G, k) each (Eq. 8)."""
        cells_BCG = F.adaptive_avg_pool2d(x_BHWC.permute(0, 3, 1, 2), self.cells(*x_BHWC.shape[1:3])).flatten(2)
        router = self.routers[min(self.view, len(self.routers) - 1)]
        logits_BGE = router(cells_BCG.transpose(1, 2))
        log_p_BGE = logits_BGE.float().log_softmax(dim=-1)  # the router's distribution over all E experts
        self.neg_entropy = (log_p_BGE.exp() * log_p_BGE).sum(-1).mean()
        if self.training and self.noise_std > 0:
            logits_BGE = logits_BGE + torch.randn_like(logits_BGE) * self.noise_std
        top_logits, ids_BGK = logits_BGE.topk(self.top_k, dim=-1)
        gates_BGK = top_logits.float().softmax(dim=-1)
        self.usage = torch.bincount(ids_BGK.reshape(-1), minlength=len(self.experts)).detach()
        return ids_BGK, gates_BGK

    def forward(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x_BHWC.shape
        ids_BGK, gates_BGK = self.route(x_BHWC)
        cell_L = cell_of_tokens(height, width, *self.cells(height, width), x_BHWC.device)
        ids_BLK, gates_BLK = ids_BGK[:, cell_L], gates_BGK[:, cell_L]
        dispatch = dense_reference if self.dense else sparse_dispatch
        y_NC = dispatch(
            x_BHWC.reshape(-1, dim), ids_BLK.reshape(-1, self.top_k), gates_BLK.reshape(-1, self.top_k), self.experts
        )
        return y_NC.reshape(batch, height, width, dim)
