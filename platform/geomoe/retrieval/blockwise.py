"""Retrieval evaluation at paper scale without a query x gallery matrix (core, no Ray; CPU or GPU).

GeoText-1652's test split is 165,681 captions x 55,227 images: its float32 score matrix is 36.6 GB. What the
evaluation reports needs far less: per query (and per image, for image -> text) the rank of its best relevant item
under each protocol (R@K, the Track 4 Score, per-platform breakdowns and bootstrap intervals all follow from ranks),
and each query's top T candidates (CGRS re-ranking, the sample). Here both are computed in blocks of rows scored
against all columns, on the device the embeddings are on; a block holds at most ``budget`` bytes of scores.

Ranks follow ``geomoe.metrics.first_relevant_rank``: descending score, ties by the lower column index.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import numpy as np
import torch

from geomoe.metrics import NO_RELEVANT
from geomoe.retrieval.search import exact_search

BUDGET = 256 << 20  # bytes of float32 scores per block (with its masks, about twice that in flight)


def label_codes(*labels: np.ndarray) -> list[np.ndarray]:
    """Integer codes of label arrays over their common vocabulary (equal labels, equal codes): strings compare
    on a device as integers."""
    values = np.concatenate([np.asarray(a) for a in labels])
    _, codes = np.unique(values, return_inverse=True)
    bounds = np.cumsum([0] + [len(a) for a in labels])
    return [codes[a:b].astype(np.int64) for a, b in pairwise(bounds)]


def block_rows(columns: int, budget: int | None = None) -> int:
    """Rows per block so that a block's float32 scores stay within ``budget`` bytes (default ``BUDGET``)."""
    return max(1, (budget or BUDGET) // (4 * max(1, columns)))


def _block_ranks(scores_BC: torch.Tensor, labels_B: torch.Tensor, labels_C: torch.Tensor) -> torch.Tensor:
    """``first_relevant_rank`` of one block of rows (all columns present)."""
    if torch.isnan(scores_BC).any():
        raise ValueError("scores contain NaN")
    relevant = labels_B[:, None] == labels_C[None, :]
    best = torch.where(relevant, scores_BC, -torch.inf).amax(dim=1, keepdim=True)
    at_best = scores_BC == best
    first = (relevant & at_best).to(torch.uint8).argmax(dim=1, keepdim=True)  # lowest column of the best relevant
    columns = torch.arange(scores_BC.shape[1], device=scores_BC.device)[None, :]
    rank = (scores_BC > best).sum(dim=1) + (at_best & (columns < first)).sum(dim=1)
    return torch.where(relevant.any(dim=1), rank, NO_RELEVANT)


def first_relevant_ranks(
    rows_RD: np.ndarray,
    columns_CD: np.ndarray,
    labels_R: np.ndarray,
    labels_C: np.ndarray,
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> np.ndarray:
    """``first_relevant_rank(rows @ columns.T, labels_R, labels_C)`` scored block by block of rows on ``device``:
    at most ``block_rows(len(columns), budget)`` rows' scores exist at a time. Labels are integer codes."""
    columns = torch.as_tensor(np.ascontiguousarray(columns_CD, np.float32)).to(device)
    label_rows = torch.as_tensor(np.asarray(labels_R, np.int64)).to(device)
    label_columns = torch.as_tensor(np.asarray(labels_C, np.int64)).to(device)
    ranks = np.empty(len(rows_RD), np.int64)
    step = block_rows(len(columns), budget)
    for start in range(0, len(rows_RD), step):
        block = torch.as_tensor(np.ascontiguousarray(rows_RD[start : start + step], np.float32)).to(device)
        ranks[start : start + len(block)] = _block_ranks(block @ columns.T, label_rows[start : start + step],
                                                         label_columns).cpu().numpy()  # fmt: skip
    return ranks


def protocol_ranks(
    queries_QD: np.ndarray,
    gallery_ND: np.ndarray,
    query_labels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per protocol, (text -> image ranks (Q,), image -> text ranks (N,)) of ``queries_QD @ gallery_ND.T``;
    ``query_labels``: per protocol (caption labels, image labels) as in ``geomoe.metrics.protocol_labels``."""
    ranks = {}
    for protocol, (caption_labels, image_labels) in query_labels.items():
        captions, images = label_codes(caption_labels, image_labels)
        ranks[protocol] = (
            first_relevant_ranks(queries_QD, gallery_ND, captions, images, device, budget),
            first_relevant_ranks(gallery_ND, queries_QD, images, captions, device, budget),
        )
    return ranks


def top_candidates(
    queries_QD: np.ndarray,
    gallery_ND: np.ndarray,
    depth: int,
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, gallery indices) of each query's ``depth`` best images, best first, ties by the lower index,
    exactly, asked ``block_rows(len(gallery_ND), budget)`` queries at a time (``exact_search``, whose order at its
    k-th place may go either way for a tie: a query tied across the cut is rescored alone and sorted stably)."""
    gallery = torch.as_tensor(np.ascontiguousarray(gallery_ND, np.float32)).to(device)
    depth = min(depth, len(gallery_ND))
    step = block_rows(len(gallery_ND), budget)
    parts = [_top(gallery, queries_QD[start : start + step], depth) for start in range(0, len(queries_QD), step)]
    if not parts:
        return np.zeros((0, depth), np.float32), np.zeros((0, depth), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _top(gallery: torch.Tensor, queries_QD: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    scores, index = exact_search(gallery, queries_QD, depth + 1)
    if scores.shape[1] > depth:
        for q in np.flatnonzero(scores[:, depth - 1] == scores[:, depth]):
            row = (gallery @ torch.as_tensor(np.asarray(queries_QD[q], np.float32)).to(gallery.device)).cpu().numpy()
            order = np.argsort(-row, kind="stable")[: depth + 1]
            scores[q], index[q] = row[order], order
    return scores[:, :depth], index[:, :depth]
