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
) -> np.ndarray:
    """Indices (Q, per_query) of the best-scoring gallery items whose group differs from the query's.

    Groups are buildings: an image of the query's own building is never a negative. A query with fewer
    than ``per_query`` wrong items available gets -1 in the missing places.
    """
    queries_QD, gallery_ND = np.asarray(queries_QD, np.float32), np.asarray(gallery_ND, np.float32)
    query_groups_Q, gallery_groups_N = np.asarray(query_groups_Q), np.asarray(gallery_groups_N)
    take = min(per_query, len(gallery_ND))
    out = np.full((len(queries_QD), per_query), -1, dtype=np.int64)
    for start in range(0, len(queries_QD), chunk):
        scores = queries_QD[start : start + chunk] @ gallery_ND.T
        positive = query_groups_Q[start : start + chunk, None] == gallery_groups_N[None, :]
        scores[positive] = -np.inf
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take else np.empty((len(scores), 0), int)
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        out[start : start + chunk, :take] = np.where(valid, top, -1)
    return out
