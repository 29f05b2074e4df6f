"""Hard-negative mining (PE-MoE sec. 3.3): for each query, the highest-scoring images of other buildings.

Scores are computed in query chunks, so memory holds chunk x gallery, never queries x gallery.
"""

from __future__ import annotations

import numpy as np


def mine_hard_negatives(
    queries_QD: np.ndarray,
    query_groups_Q: np.ndarray,
    gallery_ND: np.ndarray,
    gallery_groups_N: np.ndarray,
    per_query: int,
    chunk: int = 1024,
    pool: int | None = None,
    seed: int = 0,
    positive_Q: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (Q, per_query) of the best-scoring gallery items whose group differs from the query's.

    Groups are buildings: an image of the query's own building is never a negative. With ``pool`` > per_query,
    the negatives are drawn at random from the ``pool`` best-scoring wrong items (the very top ones are often
    false negatives: another building the caption describes just as well). With ``positive_Q`` (the gallery
    index of each query's own image), negatives are semi-hard: only items scoring below the query's own image
    (FaceNet's rule against false negatives), unless fewer than ``per_query`` such items exist. A query with
    fewer than ``per_query`` wrong items available gets -1 in the missing places.
    """
    queries_QD, gallery_ND = np.asarray(queries_QD, np.float32), np.asarray(gallery_ND, np.float32)
    query_groups_Q, gallery_groups_N = np.asarray(query_groups_Q), np.asarray(gallery_groups_N)
    pool = max(per_query, pool or per_query)
    rng = np.random.default_rng(seed)
    take = min(pool, len(gallery_ND))
    out = np.full((len(queries_QD), per_query), -1, dtype=np.int64)
    for start in range(0, len(queries_QD), chunk):
        rows = slice(start, start + chunk)
        scores = queries_QD[rows] @ gallery_ND.T
        own = None if positive_Q is None else np.take_along_axis(scores, np.asarray(positive_Q)[rows, None], axis=1)
        scores[query_groups_Q[rows, None] == gallery_groups_N[None, :]] = -np.inf
        if own is not None:
            below = np.isfinite(scores) & (scores < own)
            enough = below.sum(axis=1, keepdims=True) >= per_query  # else: no semi-hard rule for that query
            scores[~below & enough] = -np.inf
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take else np.empty((len(scores), 0), int)
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top = np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)), top, -1)
        if pool > per_query:  # per query, a random subset of its valid pool, kept in score order
            keys = np.where(top >= 0, rng.random(top.shape), np.inf)
            chosen = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :per_query], axis=1)
            top = np.take_along_axis(top, chosen, axis=1)
        out[rows, : top.shape[1]] = top
    return out
