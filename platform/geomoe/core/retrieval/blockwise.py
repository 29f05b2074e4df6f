"""Retrieval evaluation at paper scale without a query x gallery matrix (core, no Ray; CPU or GPU).

GeoText-1652's test split is 165,681 captions x 55,227 images: its float32 score matrix is 36.6 GB. What the
evaluation reports needs far less: per query (and per image, for image -> text) the rank of its best relevant item
under each protocol (R@K, the Track 4 Score, per-platform breakdowns and bootstrap intervals all follow from ranks),
and each query's top T candidates (CGRS re-ranking, the sample). Here both are computed in blocks of rows scored
against all columns, on the device the embeddings are on; a block holds at most ``budget`` bytes of scores.

Ranks follow ``geomoe.core.metrics.first_relevant_rank``: descending score, ties by the lower column index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import torch

from geomoe.core.metrics import NO_RELEVANT
from geomoe.core.retrieval.search import exact_search

BUDGET = 256 << 20  # bytes of float32 scores per block (per-label maxima and comparisons: 2-3x that in flight)


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


def _block_ranks(
    scores_BC: torch.Tensor, labels_B: torch.Tensor, labels_C: torch.Tensor, vocabulary: int
) -> torch.Tensor:
    """``first_relevant_rank`` of one block of rows (all columns present). The best relevant score of each row comes
    from per-label maxima (one scatter pass, no row x column relevance mask); the rank counts the columns above it.
    Only rows where another column ties that score (rare with real embeddings) need the tie rule's full pass."""
    if torch.isnan(scores_BC).any():
        raise ValueError("scores contain NaN")
    rows, columns = scores_BC.shape
    per_label = torch.full((rows, vocabulary), -torch.inf, device=scores_BC.device)
    per_label.scatter_reduce_(1, labels_C.expand(rows, columns), scores_BC, "amax")
    best = per_label.gather(1, labels_B[:, None])
    rank = (scores_BC > best).sum(dim=1)
    tied = torch.nonzero((scores_BC == best).sum(dim=1) > 1).flatten()
    if len(tied):
        rank[tied] = _tie_ranks(scores_BC[tied], labels_B[tied], labels_C, best[tied])
    return torch.where(best[:, 0] > -torch.inf, rank, NO_RELEVANT)


def _tie_ranks(
    scores_BC: torch.Tensor, labels_B: torch.Tensor, labels_C: torch.Tensor, best_B1: torch.Tensor
) -> torch.Tensor:
    """Ranks of rows whose best relevant score is tied: the columns above it, and the tied ones before the first
    (lowest-column) relevant column at that score."""
    relevant = labels_B[:, None] == labels_C[None, :]
    at_best = scores_BC == best_B1
    first = (relevant & at_best).to(torch.uint8).argmax(dim=1, keepdim=True)
    columns = torch.arange(scores_BC.shape[1], device=scores_BC.device)[None, :]
    return (scores_BC > best_B1).sum(dim=1) + (at_best & (columns < first)).sum(dim=1)


def first_relevant_ranks(
    rows_RD: np.ndarray,
    columns_CD: np.ndarray,
    labels: Sequence[tuple[np.ndarray, np.ndarray]],
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> list[np.ndarray]:
    """For each (row labels, column labels) pair in ``labels`` (integer codes),
    ``first_relevant_rank(rows @ columns.T, labels_R, labels_C)``, scored block by block of rows on ``device`` (a
    block's scores serve every pair): at most ``block_rows(len(columns), budget)`` rows' scores exist at a time."""
    columns = torch.as_tensor(np.ascontiguousarray(columns_CD, np.float32)).to(device)
    pairs = [(torch.as_tensor(np.asarray(r, np.int64)).to(device), torch.as_tensor(np.asarray(c, np.int64)).to(device))
             for r, c in labels]  # fmt: skip
    sizes = [int(max(r.max(initial=-1), c.max(initial=-1))) + 1 for r, c in labels]
    ranks = [np.empty(len(rows_RD), np.int64) for _ in labels]
    step = block_rows(len(columns), budget)
    for start in range(0, len(rows_RD), step):
        block = torch.as_tensor(np.ascontiguousarray(rows_RD[start : start + step], np.float32)).to(device)
        scores = block @ columns.T
        for out, (label_rows, label_columns), size in zip(ranks, pairs, sizes, strict=True):
            found = _block_ranks(scores, label_rows[start : start + step], label_columns, size)
            out[start : start + len(block)] = found.cpu().numpy()
    return ranks


def protocol_ranks(
    queries_QD: np.ndarray,
    gallery_ND: np.ndarray,
    query_labels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    device: str | torch.device = "cpu",
    budget: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per protocol, (text -> image ranks (Q,), image -> text ranks (N,)) of ``queries_QD @ gallery_ND.T``;
    ``query_labels``: per protocol (caption labels, image labels) as in ``geomoe.core.metrics.protocol_labels``. One
    scoring pass per direction serves every protocol."""
    codes = {protocol: label_codes(captions, images) for protocol, (captions, images) in query_labels.items()}
    t2i = first_relevant_ranks(queries_QD, gallery_ND, [(c, i) for c, i in codes.values()], device, budget)
    i2t = first_relevant_ranks(gallery_ND, queries_QD, [(i, c) for c, i in codes.values()], device, budget)
    return {protocol: (t2i[k], i2t[k]) for k, protocol in enumerate(codes)}


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
