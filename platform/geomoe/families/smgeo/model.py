"""SMGeo (the SMGeo paper; docs/protocols.md): drone query + click -> box of that object in a satellite tile.

Forward steps (``SMGeo.forward``):
1. the click enters in one of two ways (``click``): the paper's Fig. 4 encodes it as a prompt and fuses it in
   the fusion module (``prompt``: ``ClickPrompt``, step 3; the backbone sees RGB only), or, as the authors'
   public code does, as a fourth input channel, a Gaussian heat bump at the click (``channel``; the reference
   gets a zero channel);
2. one shared Swin (timm: windowed and shifted-window attention with relative position bias, Eq. 1-6) encodes
   both, with a grid-level sparse MoE (``gmoe.GridMoE``, Eq. 7-9) in the FFN of chosen blocks: beside the
   block's dense FFN (the paper's #P) or in its place; each view routes with its own router (Fig. 4);
3. query-guided fusion (Eq. 10): a pooled query vector against every reference location, sigmoid, weighting
   the reference features. The query vector is the plain average of the query features (``query_pool: mean``,
   the paper's) or, our option, their click-heat-weighted average (``click``);
4. anchor-free head (Eq. 11-12): two conv-BN-ReLU layers, then a centre heatmap and (dx, dy, w, h) per cell.
``decode_boxes`` turns the most confident cell into an absolute xyxy box in reference pixels (DetGeo protocol).
Targets and losses (Eq. 14-22) live in ``geomoe.families.smgeo.losses``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomoe.core.config import JobSpec
from geomoe.families.smgeo.gmoe import ExpertFFN, GridMoE
from geomoe.families.smgeo.spec import GMoESpec, SMGeoModelSpec, SwinSpec


class SMGeoOutput(NamedTuple):
    heatmap_logits: torch.Tensor  # (B, h, w) centre logits (Eq. 12; sigmoid in the loss and decoding)
    box: torch.Tensor  # (B, 4, h, w) (dx, dy, w, h) regression in feature cells
    attention: torch.Tensor  # (B, h, w) the query-guided fusion map (Eq. 10)
    neg_entropy: torch.Tensor  # () GMoE sum_i g_i log g_i, mean over layers and views (0 without GMoE)


HEATMAP_PRIOR = 0.1  # initial centre probability per cell (CenterNet's bias initialisation)
QUERY_VIEW, REFERENCE_VIEW = 0, 1  # router index of each view (GMoE routers per view, Fig. 4)


def build_swin(spec: SwinSpec, image_size: int, channels: int = 3) -> Any:
    """timm Swin with ``channels`` input channels (RGB, or RGB + click heat), any input size, no classifier.

    ``spec.pretrained`` is a local file loaded through timm's own filter (it adapts the patch embedding to the
    input channels and the relative position tables to the window size); None keeps random weights.
    """
    import timm

    overlay = {"file": spec.pretrained} if spec.pretrained else None
    return timm.create_model(
        spec.name,
        pretrained=spec.pretrained is not None,
        pretrained_cfg_overlay=overlay,
        num_classes=0,
        in_chans=channels,
        img_size=image_size,
        embed_dim=spec.embed_dim,
        depths=tuple(spec.depths),
        num_heads=tuple(spec.num_heads),
        window_size=spec.window_size,
        drop_path_rate=spec.drop_path,
        dynamic_img_size=True,
        strict_img_size=False,
    )


class TokenMoE(nn.Module):
    """Stands in for a Swin block's MLP: the block hands it (B, H*W, C); the map shape comes from a hook.
    With ``dense`` (the block's own FFN, kept), the output is dense(x) + MoE(x)."""

    def __init__(self, moe: GridMoE, dense: nn.Module | None) -> None:
        super().__init__()
        self.moe, self.dense = moe, dense
        self.hw = (0, 0)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        batch, _, dim = x_BLC.shape
        mixed: torch.Tensor = self.moe(x_BLC.reshape(batch, *self.hw, dim)).reshape(batch, -1, dim)
        return mixed if self.dense is None else self.dense(x_BLC) + mixed


def _remember_map_shape(block: Any, args: tuple[torch.Tensor, ...]) -> None:
    block.mlp.hw = tuple(args[0].shape[1:3])  # Swin blocks take (B, H, W, C)


def expert_pool(dense: Any, g: GMoESpec) -> nn.ModuleList:
    """E experts for a block whose FFN is ``dense``. Beside a kept FFN they start at output 0 (the block is the
    pretrained one at first); in its place they start as copies of it (upcycling)."""
    dim = dense.fc1.in_features
    hidden = dense.fc1.out_features if g.expert_mlp_ratio is None else round(dim * g.expert_mlp_ratio)
    experts = [ExpertFFN(dim, hidden) for _ in range(g.experts)]
    for expert in experts:
        if g.dense_path:
            expert.zero_output()
        elif hidden <= dense.fc1.out_features:
            expert.copy_from(dense.fc1, dense.fc2)
    return nn.ModuleList(experts)


def insert_gmoe(backbone: Any, spec: SMGeoModelSpec) -> list[GridMoE]:
    """Put GMoE layers in the MLP of the chosen blocks (beside the dense FFN or in its place)."""
    layers: list[GridMoE] = []
    g = spec.gmoe
    views = 2 if g.routers == "per_view" else 1
    for stage, picks in zip(backbone.layers, spec.moe_blocks(), strict=True):
        pool: nn.ModuleList | None = None
        for index in picks:
            block: Any = stage.blocks[index]
            dense = block.mlp
            if pool is None or not g.share_per_stage:
                pool = expert_pool(dense, g)
            moe = GridMoE(dense.fc1.in_features, pool, g.top_k, (g.grid[0], g.grid[1]), g.noise_std, views)
            block.mlp = TokenMoE(moe, dense if g.dense_path else None)
            block.register_forward_pre_hook(_remember_map_shape)
            layers.append(moe)
    return layers


def click_heat(clicks_B2: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) Gaussian bumps at the clicks (x, y in pixels), peak 1."""
    ys = torch.arange(height, device=clicks_B2.device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, device=clicks_B2.device, dtype=torch.float32)[None, :] + 0.5
    dx = xs[None] - clicks_B2[:, 0, None, None].float()
    dy = ys[None] - clicks_B2[:, 1, None, None].float()
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))[:, None]


class ClickPrompt(nn.Module):
    """The click as an encoded prompt, fused with the query features (Fig. 4, "fuses the features from the two
    views with the encoded click prompts"; the paper names no encoder, so this follows SAM's point prompt).

    Encoding: random Fourier features of the click's position in the query (fixed Gaussian frequencies, so
    gamma(a) . gamma(b) is a Gaussian kernel of the distance a - b with a std of one query feature cell) plus a
    learned point embedding. Fusion: the prompt attends over the query map, each cell's key being its feature
    plus the same encoding of the cell's centre, and the readout (a C-vector) joins the pooled query vector of
    Eq. 10. The kernel's peak logit is sqrt(C) / 2, so at first the softmax is sharper than the kernel (a
    neighbouring cell gets about exp(-sqrt(C) / 5) of the clicked cell's weight); training moves it through the
    point embedding and the features. Adds C parameters: the intercept of Table II stays the paper's. Computed
    in fp32 whatever autocast is on: in bf16 the angles (tens of radians at 32 cells a side) would lose half a
    radian, and training would see a noisier encoding than evaluation, which runs in fp32.
    """

    def __init__(self, dim: int, cells_per_side: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"a click prompt needs an even feature width, got {dim}")
        generator = torch.Generator().manual_seed(0)  # fixed frequencies: a buffer, saved with the weights
        scale = cells_per_side / (2 * math.pi)  # kernel std = one cell of the query map
        self.register_buffer("frequencies_2F", torch.randn(2, dim // 2, generator=generator) * scale)
        self.point = nn.Parameter(torch.zeros(dim))
        self.frequencies_2F: torch.Tensor

    def encode(self, xy_N2: torch.Tensor) -> torch.Tensor:
        """(N, C) Fourier features of positions in [0, 1]^2 (x, y as fractions of the query's width, height)."""
        angles = 2 * math.pi * xy_N2.float() @ self.frequencies_2F
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, features_BhwC: torch.Tensor, clicks_B2: torch.Tensor, query_hw: tuple[int, int]) -> torch.Tensor:
        """(B, C) readout of the query features at the click prompt."""
        with torch.autocast(features_BhwC.device.type, enabled=False):
            return self._readout(features_BhwC, clicks_B2, query_hw).to(features_BhwC.dtype)

    def _readout(self, features_BhwC: torch.Tensor, clicks_B2: torch.Tensor, query_hw: tuple[int, int]) -> torch.Tensor:
        batch, h, w, dim = features_BhwC.shape
        clicks = clicks_B2.float() / clicks_B2.new_tensor([query_hw[1], query_hw[0]]).float()
        prompt_BC = self.encode(clicks) + self.point
        ys = (torch.arange(h, device=clicks.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=clicks.device, dtype=torch.float32) + 0.5) / w
        centres_L2 = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)
        flat = features_BhwC.reshape(batch, h * w, dim).float()
        keys_BLC = flat + self.encode(centres_L2)[None]
        weights_BL = torch.softmax(torch.einsum("bc,blc->bl", prompt_BC, keys_BLC) / math.sqrt(dim), dim=1)
        return torch.einsum("bl,blc->bc", weights_BL, flat)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SMGeo(nn.Module):
    def __init__(self, spec: SMGeoModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_swin(spec.backbone, spec.reference_size, 4 if spec.click == "channel" else 3)
        self.moe_layers = insert_gmoe(self.backbone, spec)  # also reachable through backbone (registered there)
        dim = int(self.backbone.num_features)
        stride = 4 * 2 ** (len(spec.backbone.depths) - 1)  # Swin: patch 4, then each stage after the first halves
        self.prompt = ClickPrompt(dim, max(1, spec.query_size // stride)) if spec.click == "prompt" else None
        self.head = nn.Sequential(
            conv_bn_relu(dim, spec.head_channels), conv_bn_relu(spec.head_channels, spec.head_channels)
        )
        self.heatmap = nn.Conv2d(spec.head_channels, 1, 1)
        self.box = nn.Conv2d(spec.head_channels, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))  # type: ignore[arg-type]

    def encode(self, image_BCHW: torch.Tensor, view: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Shared backbone: (B, h, w, C) features and each GMoE layer's neg-entropy of this pass.
        ``view`` (QUERY_VIEW or REFERENCE_VIEW) picks the GMoE layers' router when routers are per view."""
        for layer in self.moe_layers:
            layer.view = view
        features = self.backbone.forward_features(image_BCHW)
        return features, [layer.neg_entropy for layer in self.moe_layers]

    def query_vector(self, features_BhwC: torch.Tensor, heat_B1HW: torch.Tensor | None) -> torch.Tensor:
        """Pooled query (B, C): click-heat-weighted average; the plain average without a click or in mean mode."""
        batch, h, w, _ = features_BhwC.shape
        flat = features_BhwC.reshape(batch, h * w, -1)
        if self.spec.query_pool == "mean" or heat_B1HW is None:
            return flat.mean(dim=1)
        weight_BL = F.adaptive_avg_pool2d(heat_B1HW, (h, w)).reshape(batch, h * w)
        total = weight_BL.sum(dim=1, keepdim=True)
        weight_BL = torch.where(
            total > 1e-6, weight_BL / total.clamp_min(1e-6), torch.full_like(weight_BL, 1 / (h * w))
        )
        return torch.einsum("bl,blc->bc", weight_BL.to(flat.dtype), flat)

    def forward(
        self, query_B3HW: torch.Tensor, clicks_B2: torch.Tensor, reference_B3HW: torch.Tensor, use_click: bool = True
    ) -> SMGeoOutput:
        """Heatmap logits (B, h, w), box regression (B, 4, h, w) in feature cells, fusion map (B, h, w), and
        the GMoE neg-entropy averaged over layers and both views (a scalar with gradient; 0 without GMoE)."""
        batch, _, qh, qw = query_B3HW.shape
        heat = None  # the click's Gaussian heat: built only where it is used (the channel, click pooling)
        if self.prompt is None or self.spec.query_pool == "click":
            heat = click_heat(clicks_B2, qh, qw, self.spec.click_sigma * qw)
            heat = heat if use_click else torch.zeros_like(heat)
        query_in, reference_in = query_B3HW, reference_B3HW
        if self.prompt is None:  # click: channel (RGB + heat; the reference gets a zero channel)
            assert heat is not None
            query_in = torch.cat([query_B3HW, heat.to(query_B3HW.dtype)], dim=1)
            reference_in = torch.cat([reference_B3HW, reference_B3HW.new_zeros(batch, 1, *reference_B3HW.shape[2:])], 1)
        query, entropy_q = self.encode(query_in, QUERY_VIEW)
        reference, entropy_r = self.encode(reference_in, REFERENCE_VIEW)
        q_BC = self.query_vector(query, heat)
        if self.prompt is not None and use_click:
            q_BC = q_BC + self.prompt(query, clicks_B2, (qh, qw))
        dim = reference.shape[-1]
        attention_Bhw = torch.sigmoid(torch.einsum("bc,bhwc->bhw", q_BC, reference) / math.sqrt(dim))  # Eq. 10
        fused = (reference * attention_Bhw[..., None]).permute(0, 3, 1, 2)
        trunk = self.head(fused)  # Eq. 11
        entropies = entropy_q + entropy_r
        neg_entropy = torch.stack(entropies).mean() if entropies else fused.new_zeros(())
        return SMGeoOutput(self.heatmap(trunk)[:, 0], self.box(trunk), attention_Bhw, neg_entropy)

    def expert_usage(self) -> list[list[int]]:
        """Per GMoE layer, how many (cell, slot) choices each expert got in the last reference pass."""
        return [[int(n) for n in layer.usage.tolist()] for layer in self.moe_layers]


def decode_boxes(
    heatmap_logits_Bhw: torch.Tensor, box_B4hw: torch.Tensor, reference_hw: tuple[int, int]
) -> torch.Tensor:
    """Most confident cell -> absolute xyxy box (B, 4) in reference input pixels (inverse of Eq. 14-17)."""
    batch, h, w = heatmap_logits_Bhw.shape
    best = heatmap_logits_Bhw.reshape(batch, -1).argmax(dim=1)
    row, col = best // w, best % w
    dx, dy, bw, bh = box_B4hw.reshape(batch, 4, -1)[torch.arange(batch), :, best].unbind(dim=1)
    sx, sy = reference_hw[1] / w, reference_hw[0] / h
    cx, cy = (col + dx) * sx, (row + dy) * sy
    half_w, half_h = bw.clamp_min(0) * sx / 2, bh.clamp_min(0) * sy / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def predict_input_boxes(
    model: nn.Module, query: torch.Tensor, click: torch.Tensor, reference: torch.Tensor, use_click: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(B, 4) xyxy boxes in reference input pixels and (B,) centre confidences, the forward and the decoding in
    fp32 whatever autocast is active: validation (which picks the best epoch), test evaluation and serving share
    this, so they agree exactly."""
    with torch.autocast(query.device.type, enabled=False), torch.no_grad():
        out = model(query.float(), click.float(), reference.float(), use_click=use_click)
        size = (reference.shape[-2], reference.shape[-1])
        boxes = decode_boxes(out.heatmap_logits.float(), out.box.float(), size)
        scores = torch.sigmoid(out.heatmap_logits.float().flatten(1).max(dim=1).values)
    return boxes.cpu().numpy(), scores.cpu().numpy()


def load_smgeo(directory: str) -> tuple[SMGeo, JobSpec, dict[str, Any]]:
    """(SMGeo model in eval mode, the spec it was trained with, the raw checkpoint) from a checkpoint folder."""
    from geomoe.core.models.checkpoint import load_into, read_trained

    payload, spec = read_trained(directory)
    model_spec = spec.model_as(SMGeoModelSpec)
    if "click" not in payload["spec"]["model"]:  # trained before the click prompt: the click was an input channel
        model_spec = model_spec.model_copy(update={"click": "channel"})
        spec = spec.model_copy(update={"model": model_spec})
    model = SMGeo(model_spec)
    load_into(model, payload["model"])
    return model.eval(), spec, payload
