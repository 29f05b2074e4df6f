"""Retrieval and localization metrics (docs/protocols.md). NumPy only.

Ranking convention: gallery items are ordered by descending score, ties broken by gallery index (a stable
sort of -score). This is the order a submission file would list, so metrics and submissions agree.
Relevance is label equality: the image index for the exact-image protocol, the building for the
building-level protocol. Ranks are computed in query chunks without any query x gallery mask in memory
beyond one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from geomoe.core.stats import intervals

NO_RELEVANT = -1


def first_relevant_rank(
    scores_QN: np.ndarray, query_labels_Q: np.ndarray, gallery_labels_N: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """0-based rank of the best-ranked relevant gallery item per query, or -1 if the query has none."""
    scores_QN = np.asarray(scores_QN)
    query_labels_Q, gallery_labels_N = np.asarray(query_labels_Q), np.asarray(gallery_labels_N)
    if scores_QN.shape != (len(query_labels_Q), len(gallery_labels_N)):
        raise ValueError(f"scores {scores_QN.shape} do not match {len(query_labels_Q)} x {len(gallery_labels_N)}")
    if np.isnan(scores_QN).any():
        raise ValueError("scores contain NaN")
    ranks = np.full(len(query_labels_Q), NO_RELEVANT, dtype=np.int64)
    index_N = np.arange(len(gallery_labels_N))
    for start in range(0, len(query_labels_Q), chunk):
        scores = scores_QN[start : start + chunk]
        relevant = query_labels_Q[start : start + chunk, None] == gallery_labels_N[None, :]
        has_relevant = relevant.any(axis=1)
        best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
        # first relevant item (lowest index) among those tied at the best relevant score
        first = np.argmax(relevant & (scores == best), axis=1)[:, None]
        rank = (scores > best).sum(axis=1) + ((scores == best) & (index_N[None, :] < first)).sum(axis=1)
        ranks[start : start + chunk] = np.where(has_relevant, rank, NO_RELEVANT)
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Percent of queries whose first relevant item is within the top K. Queries with none count as misses."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate")
    hit = ranks >= 0
    return {f"R@{k}": float(100.0 * np.mean(hit & (ranks < k))) for k in ks}


def recall_values(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-query values whose means are R@K (100 for a hit within the top K, else 0) and, when 1 and 10 are among
    ``ks``, the Track 4 Score ((hit@1 + hit@10) / 2): what the bootstrap resamples."""
    ranks = np.asarray(ranks)
    hits = {f"R@{k}": 100.0 * ((ranks >= 0) & (ranks < k)) for k in ks}
    if 1 in ks and 10 in ks:
        hits["Score"] = (hits["R@1"] + hits["R@10"]) / 2.0
    return hits


def capped_ranks(ranks: np.ndarray, cap: int) -> list[int]:
    """Ranks with every miss beyond the top ``cap`` (and "no relevant item") as ``cap``: all that R@K for
    K <= cap needs, small enough to keep per query in a result file."""
    ranks = np.asarray(ranks)
    return np.where((ranks < 0) | (ranks > cap), cap, ranks).astype(int).tolist()  # type: ignore[no-any-return]


def recall_entry(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, object]:
    """R@K of ``ranks``, its bootstrap intervals (and the Score's), and the ranks capped at max(ks) behind them."""
    return {
        "t2i": recall_at_k(ranks, ks),
        "t2i_interval": intervals(recall_values(ranks, ks)),
        "t2i_ranks": capped_ranks(ranks, max(ks)),
    }


def entry_values(entry: Mapping[str, object]) -> dict[str, np.ndarray]:
    """The per-query values (R@K hits, Score) of a recall entry that kept its ranks."""
    ks = [int(str(k).removeprefix("R@")) for k in entry["t2i"]]  # type: ignore[attr-defined]
    return recall_values(np.array(entry["t2i_ranks"]), ks)


def track4_score(recalls: Mapping[str, float]) -> float:
    """RoboSense Track 4 leaderboard score: (R@1 + R@10) / 2."""
    return (recalls["R@1"] + recalls["R@10"]) / 2.0


def _by_group(ranks: np.ndarray, groups: np.ndarray | None, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    if groups is None:
        return {}
    return {str(g): recall_at_k(ranks[groups == g], ks) for g in sorted(set(groups.tolist()))}


def protocol_labels(caption_image: np.ndarray, image_building: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per protocol, (caption labels, image labels) whose equality means relevant: the image itself (exact) or
    any image of the caption's building (building)."""
    caption_image, image_building = np.asarray(caption_image), np.asarray(image_building)
    return {
        "exact": (caption_image, np.arange(len(image_building))),
        "building": (image_building[caption_image], image_building),
    }


def retrieval_report(
    scores_TI: np.ndarray,
    caption_image: np.ndarray,
    image_building: np.ndarray,
    image_platform: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    protocols: Sequence[str] = ("exact", "building"),
) -> dict[str, dict[str, object]]:
    """``report_from_ranks`` of a full caption x image similarity matrix ``scores_TI`` (small data; at paper
    scale geomoe.core.retrieval.blockwise computes the ranks without one)."""
    labels = protocol_labels(caption_image, image_building)
    ranks = {
        p: (first_relevant_rank(scores_TI, *labels[p]), first_relevant_rank(np.asarray(scores_TI).T, *labels[p][::-1]))
        for p in protocols
    }
    return report_from_ranks(ranks, caption_image, image_platform, ks)


def report_from_ranks(
    ranks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    caption_image: np.ndarray,
    image_platform: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, object]]:
    """Bidirectional recall under each protocol, overall and per platform of the caption's image.

    ``ranks``: per protocol, (each caption's rank of its first relevant image, each image's rank of its first
    relevant caption), as ``first_relevant_rank`` gives them; ``caption_image``: image index of each caption;
    ``image_platform``: platform name of each image.
    Returns {protocol: {"t2i": R@K, "i2t": R@K, "t2i_interval" and "i2t_interval": 95% bootstrap intervals
    ([lo, hi] per R@K, and the Score's), "t2i_ranks": each caption's rank capped at max(ks), "t2i_by_platform":
    ..., "i2t_by_platform": ..., "score": Track 4 score (when 1 and 10 are among ks), "r_mean": mean of both
    directions' means}}.
    """
    caption_platform = None if image_platform is None else np.asarray(image_platform)[np.asarray(caption_image)]
    report: dict[str, dict[str, object]] = {}
    for protocol, (t2i, i2t) in ranks.items():
        t2i_entry, i2t_recall = recall_entry(t2i, ks), recall_at_k(i2t, ks)
        t2i_recall: dict[str, float] = t2i_entry["t2i"]  # type: ignore[assignment]
        entry: dict[str, object] = {
            **t2i_entry,  # R@K, its 95% bootstrap intervals, the per-query ranks for paired comparisons
            "i2t": i2t_recall,
            "i2t_interval": intervals({k: v for k, v in recall_values(i2t, ks).items() if k != "Score"}),
            "t2i_by_platform": _by_group(t2i, caption_platform, ks),
            "i2t_by_platform": _by_group(
                i2t, image_platform if image_platform is None else np.asarray(image_platform), ks
            ),
            "r_mean": float((np.mean(list(t2i_recall.values())) + np.mean(list(i2t_recall.values()))) / 2),
        }
        if 1 in ks and 10 in ks:
            entry["score"] = track4_score(t2i_recall)
        report[protocol] = entry
    return report


def ranks_in_order(
    order_QT: np.ndarray, query_labels_Q: np.ndarray, gallery_labels_N: np.ndarray, beyond_Q: np.ndarray
) -> np.ndarray:
    """Ranks of each query's first relevant item when its top T are re-ordered as ``order_QT`` (gallery indices,
    best first) and everything below keeps its place: the position in ``order_QT`` if a relevant item is there,
    else ``beyond_Q`` (the rank before re-ordering, which re-ordering the top T cannot change), at least T (a
    rank computed by another float32 product may differ by a near-tie at the cut; -1: no relevant item)."""
    relevant = np.asarray(gallery_labels_N)[order_QT] == np.asarray(query_labels_Q)[:, None]
    beyond = np.asarray(beyond_Q)
    below = np.where(beyond < 0, beyond, np.maximum(beyond, order_QT.shape[1]))
    return np.where(relevant.any(axis=1), relevant.argmax(axis=1), below)


def box_iou(pred_N4: np.ndarray, gt_N4: np.ndarray) -> np.ndarray:
    """IoU of paired absolute xyxy boxes; a degenerate union gives 0."""
    pred_N4, gt_N4 = np.asarray(pred_N4, dtype=np.float64), np.asarray(gt_N4, dtype=np.float64)
    lt = np.maximum(pred_N4[:, :2], gt_N4[:, :2])
    rb = np.minimum(pred_N4[:, 2:], gt_N4[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(pred_N4) + area(gt_N4) - inter
    iou: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def clamp_boxes(boxes_N4: np.ndarray, sizes_N2: np.ndarray) -> np.ndarray:
    """Clamp xyxy boxes to [0, width] x [0, height] of their images (sizes as (width, height))."""
    boxes_N4, sizes_N2 = np.asarray(boxes_N4, dtype=np.float64), np.asarray(sizes_N2, dtype=np.float64)
    upper = np.concatenate([sizes_N2, sizes_N2], axis=1)
    clamped: np.ndarray = np.clip(boxes_N4, 0, upper)
    return clamped


def clamped_iou(pred_N4: np.ndarray, gt_N4: np.ndarray, sizes_N2: np.ndarray) -> np.ndarray:
    """IoU of absolute boxes after clamping both to their tile (DetGeo protocol)."""
    return box_iou(clamp_boxes(pred_N4, sizes_N2), clamp_boxes(gt_N4, sizes_N2))


def localization_metrics(
    pred_N4: np.ndarray, gt_N4: np.ndarray, sizes_N2: np.ndarray, thresholds: Sequence[float] = (0.25, 0.5)
) -> dict[str, float]:
    """DetGeo protocol on absolute boxes: both boxes clamped to the tile; acc@t = %(IoU > t); mIoU in %."""
    iou = clamped_iou(pred_N4, gt_N4, sizes_N2)
    if len(iou) == 0:
        raise ValueError("no boxes to evaluate")
    return {k: float(v.mean()) for k, v in localization_values(iou, thresholds).items()}


def localization_values(iou_N: np.ndarray, thresholds: Sequence[float] = (0.25, 0.5)) -> dict[str, np.ndarray]:
    """Per-sample values whose means are acc@t (100 when IoU > t) and mIoU (100 * IoU)."""
    iou = np.asarray(iou_N, dtype=np.float64)
    values = {f"acc@{t:g}": 100.0 * (iou > t) for t in thresholds}
    values["mIoU"] = 100.0 * iou
    return values
