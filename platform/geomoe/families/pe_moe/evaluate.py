"""Evaluate a PE-MoE model on prepared test rows (core, no Ray): R@K both protocols, routing, chance levels."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

from geomoe.core.config import EvalSpec, RerankSpec
from geomoe.core.data.caption_store import read_caption_store
from geomoe.core.errors import DatasetError
from geomoe.core.metrics import protocol_labels, ranks_in_order, recall_entry, report_from_ranks
from geomoe.core.retrieval.blockwise import protocol_ranks, top_candidates
from geomoe.core.retrieval.rerank import (
    LexicalScorer,
    caption_evidence,
    diversified,
    fuse_top,
    reranked_order,
    unit_rows,
)
from geomoe.core.stats import query_set
from geomoe.families.pe_moe.encode import embed_dense_texts, embed_texts
from geomoe.families.pe_moe.index import index_rows, query_rows
from geomoe.families.pe_moe.model import PEMoE
from geomoe.families.pe_moe.spec import PEMoEModelSpec

SAMPLE_TOP = 5  # the sample query's best images in the report


def gallery_from_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Unique images (in first-seen order) and, per caption row, the index of its image."""
    index: dict[str, int] = {}
    images: list[dict[str, Any]] = []
    for row in rows:
        if row["image_id"] not in index:
            index[row["image_id"]] = len(images)
            images.append({k: row[k] for k in ("image_id", "image_path", "building_id", "platform")})
    return images, np.array([index[r["image_id"]] for r in rows])


def chance_recall(
    image_building: np.ndarray, caption_image: np.ndarray, ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Expected R@K of a random ranking: exact = K/N; building = mean over queries of 1 - C(N-n, K)/C(N, K)."""
    n = len(image_building)
    sizes = {b: int((image_building == b).sum()) for b in set(image_building.tolist())}
    per_query = [sizes[image_building[i]] for i in caption_image]
    return {
        "exact": {f"R@{k}": 100.0 * min(k, n) / n for k in ks},
        "building": {
            f"R@{k}": 100.0 * float(np.mean([1 - comb(n - m, k) / comb(n, k) for m in per_query])) for k in ks
        },
    }


def routing_accuracy(gates_QK: np.ndarray, query_platforms: np.ndarray, model: PEMoEModelSpec) -> float:
    """% of queries whose gate weighs the expert of their image's platform highest (the gate's training target)."""
    expert_of = model.expert_of()
    truth = np.array([expert_of[p] for p in query_platforms])
    return float(100.0 * np.mean(gates_QK.argmax(axis=1) == truth))


def evaluate_pe_moe(
    model: PEMoE,
    tokenizer: Any,
    model_spec: PEMoEModelSpec,
    evaluation: EvalSpec,
    rows: Sequence[dict[str, Any]],
    image_vectors: np.ndarray,
) -> dict[str, Any]:
    """Metrics of ``model`` on caption ``rows``; ``image_vectors`` (K, N, D) embed the rows' unique images.

    Scored on the model's device in blocks (geomoe.core.retrieval.blockwise): no caption x image matrix is built, so
    GeoText-1652's full test split (165,681 x 55,227) fits."""
    images, caption_image = gallery_from_rows(rows)
    t, g = embed_texts(model, tokenizer, [r["caption"] for r in rows], model_spec.text.max_length)
    device = next(model.parameters()).device
    queries_QD, gallery_ND = query_rows(t, g), index_rows(image_vectors, "float32")
    del t  # the gated rows hold it: at GeoText's size with 1024-d experts each copy is 2 GB
    building = np.array([im["building_id"] for im in images])
    platform = np.array([im["platform"] for im in images])
    ks, protocols = evaluation.ks, evaluation.protocols
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = {
        p: v for p, v in protocol_labels(caption_image, building).items() if p in protocols
    }
    ranks = protocol_ranks(queries_QD, gallery_ND, labels, device)
    report: dict[str, Any] = {"retrieval": report_from_ranks(ranks, caption_image, platform, ks)}
    report["chance"] = chance_recall(building, caption_image, ks)
    report["counts"] = {"queries": len(rows), "gallery": len(images)}
    # which queries against which gallery: per-query values are compared only between equal query sets
    keys = [f"{r['image_id']}\t{r['caption']}" for r in rows] + [im["image_id"] for im in images]
    report["query_set"] = query_set(keys)
    if model.fusion == "dynamic" and model.num_experts > 1:
        report["routing_accuracy"] = routing_accuracy(g, platform[caption_image], model_spec)
    depth = max([SAMPLE_TOP, *(r.top_n for r in evaluation.rerank)])
    asked = queries_QD if evaluation.rerank else queries_QD[:1]  # without re-ranking only the sample needs a top
    top_scores_QT, top_QT = top_candidates(asked, gallery_ND, depth, device)
    if evaluation.rerank:
        report["reranked"] = {}
    max_length = model_spec.text.max_length
    for rerank in evaluation.rerank:
        n = min(rerank.top_n, len(images))
        order_QT, uncaptioned = rerank_order(model, tokenizer, max_length, rows, (top_scores_QT[:, :n], top_QT[:, :n]),
                                             images, image_vectors, rerank)  # fmt: skip
        report["reranked"][rerank.name] = {
            protocol: recall_entry(ranks_in_order(order_QT, *labels[protocol], ranks[protocol][0]), ks)
            for protocol in labels
        }
        report["reranked"][rerank.name]["images_without_caption"] = uncaptioned
    report["sample"] = _sample_query(rows[0], top_scores_QT[0], top_QT[0], images)
    return report


def rerank_order(
    model: PEMoE,
    tokenizer: Any,
    max_length: int,
    rows: Sequence[dict[str, Any]],
    first_top: tuple[np.ndarray, np.ndarray],
    images: Sequence[dict[str, Any]],
    image_vectors_KND: np.ndarray,
    rerank: RerankSpec,
) -> tuple[np.ndarray, int]:
    """CGRS: each query's top T (``first_top``: the first stage's (scores, gallery indices), best first)
    re-ordered by query-caption similarity, as gallery indices best first, and how many gallery images have no
    caption (a candidate without one gets the query's lowest caption score: no evidence, never a boost)."""
    store = read_caption_store(rerank.captions)
    uncaptioned = sum(im["image_id"] not in store for im in images)
    if uncaptioned == len(images):
        raise DatasetError(f"{rerank.captions}: none of the {len(images)} gallery images has a caption")
    captions = [c for im in images for c in store.get(im["image_id"], [])]
    first_caption = np.cumsum([0] + [len(store.get(im["image_id"], [])) for im in images])
    first_QT, top_QT = first_top
    caption_QT = caption_evidence(
        [r["caption"] for r in rows],
        top_QT,
        first_caption,
        captions,
        rerank.dense_weight,
        rerank.lexical_weight,
        lambda texts: embed_dense_texts(model, tokenizer, texts, max_length),
        LexicalScorer(captions),
    )
    order_QT = reranked_order(fuse_top(first_QT, caption_QT, rerank.weight, rerank.normalise), top_QT)
    if rerank.diversity is not None:
        unit_ND = unit_rows(image_vectors_KND.transpose(1, 0, 2).reshape(len(images), -1))
        order_QT = np.array([diversified(order, unit_ND, rerank.diversity) for order in order_QT])
    return order_QT, uncaptioned


def _sample_query(
    row: dict[str, Any], scores_T: np.ndarray, top_T: np.ndarray, images: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "query": row["caption"],
        "building": row["building_id"],
        "top5": [
            {
                "image_id": images[i]["image_id"],
                "score": round(float(score), 4),
                "same_building": images[i]["building_id"] == row["building_id"],
            }
            for score, i in zip(scores_T[:SAMPLE_TOP], top_T[:SAMPLE_TOP], strict=True)
        ],
    }
