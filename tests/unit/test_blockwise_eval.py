"""Evaluation without a query x gallery matrix equals the full-matrix evaluation.

The reference is the full-matrix code the evaluation used before (``fused_scores`` -> ``retrieval_report``;
``top_n`` -> ``fuse_top_n`` -> ``diversify`` -> ``first_relevant_rank``), which stays in the code base for small
inputs (serving one query, tests). Scores are quantised in the rank tests so that ties occur and the tie rule
(lower index first) is exercised across block borders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomoe.core.config import EvalSpec, JobSpec, parse_spec
from geomoe.core.data.caption_store import write_caption_store
from geomoe.core.metrics import first_relevant_rank, protocol_labels, recall_entry, retrieval_report
from geomoe.core.retrieval import blockwise
from geomoe.core.retrieval.blockwise import block_rows, first_relevant_ranks, label_codes, top_candidates
from geomoe.core.retrieval.rerank import LexicalScorer, caption_evidence, diversify, fuse_top_n, top_n
from geomoe.families.pe_moe.encode import embed_dense_texts, embed_texts
from geomoe.families.pe_moe.evaluate import evaluate_pe_moe, gallery_from_rows
from geomoe.families.pe_moe.factory import build_pe_moe, ensure_tiny_models
from geomoe.families.pe_moe.model import fused_scores
from geomoe.families.pe_moe.spec import PEMoEModelSpec

WORDS = ["red", "flat", "roof", "pond", "tall", "white", "tower", "brick", "glass", "dome", "park", "road"]


def _quantised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return np.round(rng.normal(size=(n, d)) * 2).astype(np.float32)  # small integers: many equal scores


@pytest.mark.parametrize("budget", [4 * 7, 4 * 50, 1 << 20])  # 1 row per block, 4 rows, everything at once
def test_blockwise_ranks_equal_the_full_matrix_ranks_with_ties(budget: int) -> None:
    rng = np.random.default_rng(0)
    queries, gallery = _quantised(rng, 23, 3), _quantised(rng, 50, 3)
    query_buildings = rng.choice(["b1", "b2", "b3", "b9"], size=23)  # b9: no relevant image anywhere
    gallery_buildings = rng.choice(["b1", "b2", "b3"], size=50)
    full = queries @ gallery.T
    assert len(np.unique(full)) < full.size / 4  # ties everywhere
    codes_q, codes_g = label_codes(query_buildings, gallery_buildings)
    expected = first_relevant_rank(full, query_buildings, gallery_buildings)
    assert (expected == -1).any()
    exact_q, exact_g = np.arange(23) * 3 % 60, np.arange(50)  # the exact protocol: one relevant column, or none
    got, got_exact = first_relevant_ranks(queries, gallery, [(codes_q, codes_g), (exact_q, exact_g)], budget=budget)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_exact, first_relevant_rank(full, exact_q, exact_g))
    expected_i2t = first_relevant_rank(full.T, gallery_buildings, query_buildings)
    (got_i2t,) = first_relevant_ranks(gallery, queries, [(codes_g, codes_q)], budget=budget)
    np.testing.assert_array_equal(got_i2t, expected_i2t)
    assert block_rows(50, budget) == max(1, budget // 200)


def test_top_candidates_are_the_stable_top_of_each_row_even_across_the_cut() -> None:
    rng = np.random.default_rng(1)
    queries, gallery = _quantised(rng, 40, 2), _quantised(rng, 30, 2)
    for depth in (1, 5, 30, 31):
        scores, index = top_candidates(queries, gallery, depth)
        expected = top_n(queries @ gallery.T, depth)
        np.testing.assert_array_equal(index, expected)
        np.testing.assert_array_equal(scores, np.take_along_axis(queries @ gallery.T, expected, axis=1))


def _rows(rng: np.random.Generator, tmp: Path) -> list[dict[str, object]]:
    """36 images, 4 per building, platforms in turn; 2 or 3 random captions each."""
    platforms = ("satellite", "drone", "ground")
    return [
        {"image_id": f"img{i}", "image_path": str(tmp / f"{i}.png"), "caption": " ".join(rng.choice(WORDS, size=5)),
         "building_id": f"b{i // 4}", "platform": platforms[i % 3]}
        for i in range(36)
        for _ in range(2 + i % 2)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, object, object, list[dict[str, object]], Path]:
    tmp = tmp_path_factory.mktemp("blockwise")
    rng = np.random.default_rng(2)
    rows = _rows(rng, tmp)
    store = [
        {"image_id": f"img{i}", "caption": " ".join(rng.choice(WORDS, size=4)), "model_id": "m", "prompt_sha256": ""}
        for i in range(36)
        if i % 5
    ]  # every 5th image has no caption
    captions = write_caption_store(str(tmp / "captions.parquet"), store)
    model = {
        "embed_dim": 16, "gate_hidden": 8, "text": {"source": str(tmp / "text"), "tail_layers": 1, "max_length": 16},
        "image": {"name": "geomoe-eva02-micro", "pretrained": str(tmp / "i.pt"), "image_size": 32, "tail_blocks": 1},
        "tiny": {"text_hidden": 16, "text_layers": 2, "text_heads": 2},
    }  # fmt: skip
    rerank = [
        {"name": "dense", "captions": str(captions), "top_n": 8, "diversity": 0.2},
        {"name": "lexical", "captions": str(captions), "top_n": 20, "dense_weight": 0.3, "lexical_weight": 1.0,
         "normalise": "minmax"},
    ]  # fmt: skip
    raw = {"name": "b", "stages": ["train"], "data": {"format": "geotext", "root": str(tmp)}, "model": model,
           "train": {"batch_size": 4, "lr": 1e-3}, "eval": {"rerank": rerank, "ks": [1, 5, 10]}}  # fmt: skip
    spec = parse_spec(JobSpec, raw, "test")
    ensure_tiny_models(spec.model_as(PEMoEModelSpec), [str(r["caption"]) for r in rows] * 3)
    torch.manual_seed(0)
    pe_moe, tokenizer = build_pe_moe(spec.model_as(PEMoEModelSpec))
    return spec, pe_moe, tokenizer, rows, captions


def _reference(spec: JobSpec, model: object, tokenizer: object, rows: list, vectors: np.ndarray) -> dict:
    """The evaluation's numbers from the full matrix, as evaluate_pe_moe computed them before."""
    from geomoe.core.data.caption_store import read_caption_store

    images, caption_image = gallery_from_rows(rows)
    length = spec.model_as(PEMoEModelSpec).text.max_length
    t, g = embed_texts(model, tokenizer, [r["caption"] for r in rows], length)  # type: ignore[arg-type]
    scores = fused_scores(t, vectors, g)
    building = np.array([im["building_id"] for im in images])
    platform = np.array([im["platform"] for im in images])
    ks, protocols = spec.eval.ks, spec.eval.protocols
    top5 = np.argsort(-scores[0], kind="stable")[:5]
    reference = {
        "retrieval": retrieval_report(scores, caption_image, building, platform, ks, protocols),
        "reranked": {},
        "sample": [(images[i]["image_id"], float(scores[0, i])) for i in top5],
    }
    for rerank in spec.eval.rerank:
        store = read_caption_store(rerank.captions)
        captions = [c for im in images for c in store.get(im["image_id"], [])]
        first_caption = np.cumsum([0] + [len(store.get(im["image_id"], [])) for im in images])
        top = top_n(scores, rerank.top_n)
        evidence = caption_evidence([r["caption"] for r in rows], top, first_caption, captions, rerank.dense_weight,
                                    rerank.lexical_weight, lambda x: embed_dense_texts(model, tokenizer, x, length),  # type: ignore[arg-type]
                                    LexicalScorer(captions))  # fmt: skip
        fused = fuse_top_n(scores, evidence, top, rerank.weight, rerank.normalise)
        if rerank.diversity is not None:
            fused = diversify(
                fused, vectors.transpose(1, 0, 2).reshape(len(images), -1), rerank.top_n, rerank.diversity
            )
        reference["reranked"][rerank.name] = {
            p: recall_entry(first_relevant_rank(fused, *labels), ks)
            for p, labels in protocol_labels(caption_image, building).items()
            if p in protocols
        }
    return reference


LEXICAL = {"name": "lexical", "top_n": 20, "dense_weight": 0.3, "lexical_weight": 1.0, "normalise": "minmax"}
EVALUATIONS = {
    "both protocols, two re-rankings (one with diversity)": {"rerank": [{"name": "dense", "top_n": 8, "diversity": 0.2},
                                                                        LEXICAL]},
    "building only, a re-ranking deeper than the gallery": {"protocols": ["building"],
                                                            "rerank": [{"name": "all", "top_n": 50}]},
}  # fmt: skip


@pytest.mark.parametrize("evaluation", EVALUATIONS.values(), ids=EVALUATIONS.keys())
def test_evaluation_equals_the_full_matrix_evaluation(
    tiny: tuple, evaluation: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, model, tokenizer, rows, captions = tiny
    reranks = [r | {"captions": str(captions)} for r in evaluation["rerank"]]
    spec = spec.model_copy(update={"eval": EvalSpec.model_validate(evaluation | {"rerank": reranks})})
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 36, 16)).astype(np.float32)
    vectors[:, 7] = vectors[:, 6]  # two images with equal embeddings: equal scores everywhere
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    monkeypatch.setattr("geomoe.core.retrieval.blockwise.BUDGET", 4 * 36 * 5)  # blocks of 5 captions, 1-2 images
    report = evaluate_pe_moe(model, tokenizer, spec.model_as(PEMoEModelSpec), spec.eval, rows, vectors)
    reference = _reference(spec, model, tokenizer, rows, vectors)
    assert report["retrieval"] == reference["retrieval"]
    assert set(report["retrieval"]) == set(spec.eval.protocols)
    assert report["reranked"].keys() == reference["reranked"].keys()
    for name, entries in reference["reranked"].items():
        for protocol, entry in entries.items():
            assert report["reranked"][name][protocol] == entry, (name, protocol)
        assert report["reranked"][name]["images_without_caption"] == 8  # img0, img5, ..., img35
    sample = [(s["image_id"], s["score"]) for s in report["sample"]["top5"]]
    assert [i for i, _ in sample] == [i for i, _ in reference["sample"]]
    assert [s for _, s in sample] == pytest.approx([s for _, s in reference["sample"]], abs=1e-4)
    # it re-ranked: some recall moved (R@1 alone can tie by chance: the tiny random text model varies with the stack)
    first = report["retrieval"][spec.eval.protocols[0]]["t2i"]
    assert any(e[spec.eval.protocols[0]]["t2i"] != first for e in report["reranked"].values())


def test_a_tie_across_the_top_cut_is_resolved_by_the_lower_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """exact_search may order a tie at its k-th place either way: with the tie put the wrong way round on purpose,
    the rescoring still returns the stable top."""
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    gallery = np.array([[0.5, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 2.0], [0.5, 0.0]], np.float32)  # ties at 0.5
    real = blockwise.exact_search

    def wrong_way_round(rows: object, asked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, index = real(rows, asked, k)  # type: ignore[arg-type]
        index[:, [k - 2, k - 1]] = index[:, [k - 1, k - 2]]  # the last two swapped: a tie there now goes up
        return scores, index

    monkeypatch.setattr(blockwise, "exact_search", wrong_way_round)
    assert wrong_way_round(gallery, queries, 3)[1][0, :2].tolist() != [1, 0]  # the cut is wrong on purpose
    scores, index = top_candidates(queries, gallery, 2)
    np.testing.assert_array_equal(index, top_n(queries @ gallery.T, 2))
    assert index[0].tolist() == [1, 0] and scores[0].tolist() == [1.0, 0.5]
