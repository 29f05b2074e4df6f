"""Evaluate a PE-MoE model on prepared test rows (core, no Ray): R@K both protocols, routing, chance levels."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

from geomoe.config import JobSpec, RerankSpec
from geomoe.config.pe_moe import PEMoEModelSpec
from geomoe.data.caption_store import read_caption_store
from geomoe.errors import DatasetError
from geomoe.metrics import first_relevant_rank, protocol_labels, recall_entry, retrieval_report
from geomoe.models.pe_moe import PEMoE, fused_scores
from geomoe.retrieval.embed import embed_dense_texts, embed_texts
from geomoe.retrieval.rerank import LexicalScorer, caption_evidence, diversify, fuse_top_n, top_n
from geomoe.stats import query_set


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


def evaluate_pe_moe(
    model: PEMoE, tokenizer: Any, spec: JobSpec, rows: Sequence[dict[str, Any]], image_vectors: np.ndarray
) -> dict[str, Any]:
    """Metrics of ``model`` on caption ``rows``; ``image_vectors`` (K, N, D) embed the rows' unique images."""
    images, caption_image = gallery_from_rows(rows)
    t, g = embed_texts(model, tokenizer, [r["caption"] for r in rows], spec.model_as(PEMoEModelSpec).text.max_length)
    scores = fused_scores(t, image_vectors, g)
    building = np.array([im["building_id"] for im in images])
    platform = np.array([im["platform"] for im in images])
    ks = spec.eval.ks
    report: dict[str, Any] = {
        "retrieval": retrieval_report(scores, caption_image, building, platform, ks, spec.eval.protocols)
    }
    report["chance"] = chance_recall(building, caption_image, ks)
    report["counts"] = {"queries": len(rows), "gallery": len(images)}
    # which queries against which gallery: per-query values are compared only between equal query sets
    keys = [f"{r['image_id']}\t{r['caption']}" for r in rows] + [im["image_id"] for im in images]
    report["query_set"] = query_set(keys)
    if model.fusion == "dynamic" and model.num_experts > 1:
        expert_of = spec.model_as(PEMoEModelSpec).expert_of()
        truth = np.array([expert_of[platform[i]] for i in caption_image])
        report["routing_accuracy"] = float(100.0 * np.mean(g.argmax(axis=1) == truth))
    if spec.eval.rerank:
        report["reranked"] = {}
    for rerank in spec.eval.rerank:
        reranked, uncaptioned = rerank_scores(model, tokenizer, spec, rows, scores, images, image_vectors, rerank)
        report["reranked"][rerank.name] = {
            protocol: recall_entry(first_relevant_rank(reranked, *labels), ks)
            for protocol, labels in protocol_labels(caption_image, building).items()
            if protocol in spec.eval.protocols
        }
        report["reranked"][rerank.name]["images_without_caption"] = uncaptioned
    report["sample"] = _sample_query(rows[0]["caption"], scores[0], images, rows[0]["building_id"])
    return report


def rerank_scores(
    model: PEMoE,
    tokenizer: Any,
    spec: JobSpec,
    rows: Sequence[dict[str, Any]],
    scores_QN: np.ndarray,
    images: Sequence[dict[str, Any]],
    image_vectors_KND: np.ndarray,
    rerank: RerankSpec,
) -> tuple[np.ndarray, int]:
    """CGRS: the first stage's scores with each query's top ``top_n`` re-ordered by query-caption similarity,
    and how many gallery images have no caption (a candidate without one gets the query's lowest caption score:
    no evidence, never a boost)."""
    store = read_caption_store(rerank.captions)
    uncaptioned = sum(im["image_id"] not in store for im in images)
    if uncaptioned == len(images):
        raise DatasetError(f"{rerank.captions}: none of the {len(images)} gallery images has a caption")
    captions = [c for im in images for c in store.get(im["image_id"], [])]
    first_caption = np.cumsum([0] + [len(store.get(im["image_id"], [])) for im in images])
    top_QT = top_n(scores_QN, rerank.top_n)
    length = spec.model_as(PEMoEModelSpec).text.max_length
    caption_QT = caption_evidence(
        [r["caption"] for r in rows],
        top_QT,
        first_caption,
        captions,
        rerank.dense_weight,
        rerank.lexical_weight,
        lambda texts: embed_dense_texts(model, tokenizer, texts, length),
        LexicalScorer(captions),
    )
    fused = fuse_top_n(scores_QN, caption_QT, top_QT, rerank.weight, rerank.normalise)
    if rerank.diversity is not None:
        flat_ND = image_vectors_KND.transpose(1, 0, 2).reshape(len(images), -1)
        fused = diversify(fused, flat_ND, rerank.top_n, rerank.diversity)
    return fused, uncaptioned


def _sample_query(caption: str, scores_N: np.ndarray, images: list[dict[str, Any]], building: str) -> dict[str, Any]:
    top = np.argsort(-scores_N, kind="stable")[:5]
    return {
        "query": caption,
        "building": building,
        "top5": [
            {
                "image_id": images[i]["image_id"],
                "score": round(float(scores_N[i]), 4),
                "same_building": images[i]["building_id"] == building,
            }
            for i in top
        ],
    }
