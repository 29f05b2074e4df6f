"""Embed captions and images with a PE-MoE model in batches (no gradient)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geomoe.core.data.images import Fetch, image_arrays
from geomoe.families.pe_moe.factory import tokenize
from geomoe.families.pe_moe.model import PEMoE


@torch.no_grad()
def embed_texts(
    model: PEMoE, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(t_KQD per-expert normalised embeddings, g_QK gate weights) as float32 arrays."""
    model.eval()
    device = next(model.parameters()).device
    t_parts, g_parts = [], []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length)
        shared, t = model.encode_text(ids.to(device), mask.to(device))
        t_parts.append(t.float().cpu().numpy())
        g_parts.append(model.gate_weights(shared).float().cpu().numpy())
    return np.concatenate(t_parts, axis=1), np.concatenate(g_parts, axis=0)


@torch.no_grad()
def embed_dense_texts(
    model: PEMoE, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 256
) -> np.ndarray:
    """(Q, H) the frozen text model's own normalised sentence embeddings (BGE-M3's dense vectors in the paper
    configuration: the last layer's CLS): the text-to-text similarity space for re-ranking by captions."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length)
        parts.append(model.dense_text(ids.to(device), mask.to(device)).cpu().numpy())
    return np.concatenate(parts, axis=0)


@torch.no_grad()
def embed_image_batch(model: PEMoE, paths: Sequence[str], image_size: int, fetch: Fetch | None = None) -> np.ndarray:
    """v (B, K, D): every expert's normalised embedding of each image in one batch of paths (their bytes from
    ``fetch``, a prepared image table, or each path).

    Batches of a gallery are spread over Ray Data actors by ``geomoe.families.pe_moe.pipelines``.
    """
    model.eval()
    device = next(model.parameters()).device
    pixels = torch.from_numpy(image_arrays(paths, image_size, fetch)).to(device)
    return model.encode_image(pixels).float().cpu().numpy().transpose(1, 0, 2)
