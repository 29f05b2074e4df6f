"""Evaluate a PE-MoE model on prepared test rows (core, no Ray): R@K both protocols, routing, chance levels."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

from geomoe.config import JobSpec
from geomoe.metrics import retrieval_report
from geomoe.models.pe_moe import PEMoE
from geomoe.retrieval.embed import embed_texts, fused_scores


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
    t, g = embed_texts(model, tokenizer, [r["caption"] for r in rows], spec.pe_moe.text.max_length)
    scores = fused_scores(t, image_vectors, g)
    building = np.array([im["building_id"] for im in images])
    platform = np.array([im["platform"] for im in images])
    ks = spec.eval.ks
    report: dict[str, Any] = {
        "retrieval": retrieval_report(scores, caption_image, building, platform, ks, spec.eval.protocols)
    }
    report["chance"] = chance_recall(building, caption_image, ks)
    report["counts"] = {"queries": len(rows), "gallery": len(images)}
    if model.fusion == "dynamic" and model.num_experts > 1:
        expert_of = spec.pe_moe.expert_of()
        truth = np.array([expert_of[platform[i]] for i in caption_image])
        report["routing_accuracy"] = float(100.0 * np.mean(g.argmax(axis=1) == truth))
    report["sample"] = _sample_query(rows[0]["caption"], scores[0], images, rows[0]["building_id"])
    return report


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
