"""CGRS re-ranking core and the caption store: hand-made scores, an exact expected order, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geomoe.core.data.caption_store import read_caption_store, write_caption_store
from geomoe.core.data.synthgeo import GALLERY_CAPTIONS, SCENE_CAPTIONER
from geomoe.core.errors import DatasetError
from geomoe.core.retrieval.rerank import (
    LexicalScorer,
    best_per_candidate,
    candidate_triples,
    caption_evidence,
    diversify,
    fuse_top_n,
    normalise,
    top_n,
)


def order(scores: np.ndarray) -> list[list[int]]:
    return np.argsort(-scores, axis=1, kind="stable").tolist()


def test_normalise_per_query() -> None:
    z = normalise(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]), "zscore")
    np.testing.assert_allclose(z[0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert (z[1] == 0).all()  # a constant row carries no preference
    np.testing.assert_allclose(normalise(np.array([[2.0, 4.0, 3.0]]), "minmax"), [[0.0, 1.0, 0.5]])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(np.zeros((1, 2)), "rank")


def test_fusion_reorders_only_the_top_n() -> None:
    first = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])  # first stage: 0 > 1 > 2 > 3 > 4
    top = top_n(first, 3)
    assert top.tolist() == [[0, 1, 2]]
    captions = np.array([[0.0, 0.1, 1.0]])  # the captions prefer item 2, then 1
    assert order(fuse_top_n(first, captions, top, weight=1.0, how="zscore")) == [[2, 1, 0, 3, 4]]
    assert order(fuse_top_n(first, captions, top, weight=0.0, how="zscore")) == [[0, 1, 2, 3, 4]]
    # weight 0.5, z-scores: first (1.22, 0, -1.22), captions (-0.82, -0.59, 1.41) -> fused (0.21, -0.30, 0.09)
    assert order(fuse_top_n(first, captions, top, weight=0.5, how="zscore")) == [[0, 2, 1, 3, 4]]


def test_diversity_pushes_near_duplicates_down() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [1.0, 0.0]])  # item 1 nearly duplicates item 0
    assert order(diversify(scores, vectors, n=3, threshold=0.85)) == [[0, 2, 1, 3]]
    assert order(diversify(scores, vectors, n=3, threshold=0.999)) == [[0, 1, 2, 3]]


def test_lexical_scorer_prefers_shared_rare_words() -> None:
    captions = ["a red flat roof building", "a blue flat roof building", "a red pitched roof building"]
    scorer = LexicalScorer(captions)
    scores = scorer.score("red pitched roof", captions)
    assert scores.argmax() == 2 and scores[0] > scores[1]


def test_best_caption_per_candidate() -> None:
    # image 0 owns captions 0, 1; image 1 owns caption 2; image 2 owns caption 3
    first_caption = np.array([0, 2, 3, 4])
    top = np.array([[2, 0, 1], [1, 2, 0]])
    q, t, c = candidate_triples(top, first_caption)
    assert list(zip(q.tolist(), t.tolist(), c.tolist(), strict=True)) == [
        (0, 0, 3), (0, 1, 0), (0, 1, 1), (0, 2, 2), (1, 0, 2), (1, 1, 3), (1, 2, 0), (1, 2, 1),
    ]  # fmt: skip
    sim_QM = np.array([[0.1, 0.5, 0.3, 0.2], [0.7, 0.0, 0.4, 0.9]])
    best = best_per_candidate(sim_QM[q, c], q, t, top.shape)
    np.testing.assert_allclose(best, [[0.2, 0.5, 0.3], [0.4, 0.9, 0.7]])


def test_candidates_with_the_same_caption_tie_exactly_and_the_lower_index_wins() -> None:
    """An embedder whose vectors depend on the batch (as padding to the batch's longest text makes them, in the
    last bits) must not decide between two images with the same caption: each distinct text is embedded once."""

    def batch_dependent(texts: list[str]) -> np.ndarray:
        vectors = np.array([[1.0, len(t) / 100] for t in texts]) + 1e-9 * np.arange(len(texts))[:, None]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    captions = ["a red roof", "a pond", "a red roof"]  # images 0 and 2 share a caption
    first_caption, top = np.arange(4), np.array([[2, 1, 0]])
    evidence = caption_evidence(["a red roof"], top, first_caption, captions, 1.0, 0.0, batch_dependent,
                                LexicalScorer(captions))  # fmt: skip
    assert evidence[0, 0] == evidence[0, 2]  # images 2 and 0: bit-identical evidence
    fused = fuse_top_n(np.array([[0.5, 0.5, 0.5]]), evidence, top, 1.0, "zscore")
    assert order(fused)[0][:2] == [0, 2]  # the tie goes to the lower gallery index


def test_caption_store_round_trip_and_errors(tmp_path: Path) -> None:
    path = write_caption_store(
        tmp_path / "c.parquet",
        [
            {"image_id": "0001/a.jpg", "caption": "one", "model_id": "m", "prompt_sha256": "h"},
            {"image_id": "0001/a.jpg", "caption": "two", "model_id": "m", "prompt_sha256": "h"},
        ],
    )
    assert read_caption_store(path) == {"0001/a.jpg": ["one", "two"]}
    bad = write_caption_store(
        tmp_path / "bad.parquet", [{"image_id": "x", "caption": " ", "model_id": "m", "prompt_sha256": ""}]
    )
    with pytest.raises(DatasetError, match=r"bad\.parquet: row 0 \(image 'x'\): empty caption"):
        read_caption_store(bad)
    with pytest.raises(DatasetError, match="caption store not found"):
        read_caption_store(tmp_path / "none.parquet")


def test_synthgeo_writes_scene_graph_captions_for_every_test_image(tiny_synth: tuple[Path, dict]) -> None:
    root, counts = tiny_synth
    store = read_caption_store(root / "geotext" / GALLERY_CAPTIONS)
    assert len(store) == sum(counts["geotext"]["test"]["images"].values())
    assert all(len(c) == 1 and c[0].endswith(".") for c in store.values())
    import pyarrow.parquet as pq

    assert set(pq.read_table(root / "geotext" / GALLERY_CAPTIONS)["model_id"].to_pylist()) == {SCENE_CAPTIONER}


def test_a_candidate_without_caption_gets_the_lowest_caption_score() -> None:
    first_caption = np.array([0, 1, 1, 2])  # image 0: caption 0; image 1: none; image 2: caption 1
    top = np.array([[1, 0, 2]])
    q, t, c = candidate_triples(top, first_caption)
    best = best_per_candidate(np.array([0.9, 0.2])[c], q, t, top.shape)
    np.testing.assert_allclose(best, [[0.2, 0.9, 0.2]])


def test_lexical_pair_scores_match_full_scores() -> None:
    captions = ["a red flat roof", "a blue pitched roof", "grey facade"]
    scorer = LexicalScorer(captions)
    queries = ["red roof", "grey facade with windows"]
    q, c = np.array([0, 0, 1, 1]), np.array([0, 1, 2, 0])
    expected = [scorer.score(queries[i], [captions[j]])[0] for i, j in zip(q, c, strict=True)]
    np.testing.assert_allclose(scorer.pair_scores(queries, captions, q, c), expected)
