import numpy as np
import pytest

from geomoe.core.retrieval.mining import mine_hard_negatives
from geomoe.families.pe_moe.evaluate import chance_recall, gallery_from_rows
from geomoe.families.pe_moe.model import fused_scores


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_mining_never_returns_a_positive_and_takes_the_hardest(chunk: int) -> None:
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(40, 8)), rng.normal(size=(60, 8))
    qg, gg = rng.integers(0, 6, size=40), rng.integers(0, 6, size=60)
    found = mine_hard_negatives(queries, qg, gallery, gg, per_query=3, chunk=chunk)
    scores = queries @ gallery.T
    for q in range(40):
        assert (gg[found[q]] != qg[q]).all()
        wrong = np.nonzero(gg != qg[q])[0]
        expected = wrong[np.argsort(-scores[q, wrong], kind="stable")[:3]]
        np.testing.assert_array_equal(np.sort(found[q]), np.sort(expected))


def test_semi_hard_mining_stays_below_the_own_image_and_pool_draws_from_the_top() -> None:
    rng = np.random.default_rng(2)
    queries, gallery = rng.normal(size=(30, 8)), rng.normal(size=(80, 8))
    qg, gg = np.arange(30) % 10, np.arange(80) % 10
    own = np.arange(30)  # gallery item q belongs to query q's building (q % 10)
    scores = queries @ gallery.T
    semi = mine_hard_negatives(queries, qg, gallery, gg, per_query=2, positive_Q=own)
    pooled = mine_hard_negatives(queries, qg, gallery, gg, per_query=2, pool=5, seed=3)
    for q in range(30):
        wrong = np.nonzero(gg != qg[q])[0]
        below = wrong[scores[q, wrong] < scores[q, own[q]]]
        if len(below) >= 2:  # otherwise the rule is waived for this query
            expected = below[np.argsort(-scores[q, below], kind="stable")[:2]]
            np.testing.assert_array_equal(np.sort(semi[q]), np.sort(expected))
        top5 = wrong[np.argsort(-scores[q, wrong], kind="stable")[:5]]
        assert set(pooled[q]) <= set(top5) and len(set(pooled[q])) == 2 and (gg[pooled[q]] != qg[q]).all()


def test_semi_hard_rule_is_waived_when_only_own_building_images_score_below() -> None:
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[0.5, 0.0], [0.1, 0.0], [0.9, 0.0], [0.8, 0.0]])  # own image 0, its building's 1; others
    found = mine_hard_negatives(
        query, np.array([7]), gallery, np.array([7, 7, 1, 2]), per_query=1, positive_Q=np.array([0])
    )
    assert found.tolist() == [[2]]  # the hardest wrong image, not -1


def test_mining_marks_missing_negatives() -> None:
    found = mine_hard_negatives(np.ones((2, 2)), np.array([0, 0]), np.ones((3, 2)), np.array([0, 0, 1]), per_query=2)
    assert (found[:, 0] == 2).all() and (found[:, 1] == -1).all()


def test_fused_scores_numpy_matches_loop() -> None:
    rng = np.random.default_rng(1)
    t, v, g = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 6, 5)), rng.random((4, 3))
    expected = sum(g[:, k, None] * (t[k] @ v[k].T) for k in range(3))
    np.testing.assert_allclose(fused_scores(t, v, g), expected)


def test_chance_levels_and_gallery() -> None:
    rows = [
        {"image_id": i, "image_path": i, "building_id": b, "platform": "drone"}
        for i, b in [("a", "1"), ("a", "1"), ("b", "1"), ("c", "2")]
    ]
    images, caption_image = gallery_from_rows(rows)
    assert [im["image_id"] for im in images] == ["a", "b", "c"] and caption_image.tolist() == [0, 0, 1, 2]
    chance = chance_recall(np.array(["1", "1", "2"]), caption_image, [1, 3])
    assert chance["exact"] == {"R@1": pytest.approx(100 / 3), "R@3": 100.0}
    # building 1 has 2 of 3 images: P(hit@1) = 2/3; building 2: 1/3 -> mean over captions (1,1,1,2)
    assert chance["building"]["R@1"] == pytest.approx(100 * (3 * 2 / 3 + 1 / 3) / 4)


def test_paper_mining_ranks_the_whole_training_gallery_by_the_fused_score(tmp_path) -> None:
    """PE-MoE sec. 3.3: "we test the model on the training set itself" -> negatives from any platform, ranked by
    Eq. 1; ``mining_scope: platform`` (ours) keeps each row's negatives on its own platform, by its expert."""
    from geomoe.families.pe_moe.driver import hard_negative_paths
    from tiny_jobs import pe_moe_job

    # the tiny job's three experts (satellite 0, drone 1, ground 2), D = 2; the query is row 0 (building A, drone)
    rows = [
        {"image_path": "a_drone", "building_id": "A", "expert": 1},
        {"image_path": "b_sat", "building_id": "B", "expert": 0},
        {"image_path": "c_drone", "building_id": "C", "expert": 1},
        {"image_path": "d_sat", "building_id": "D", "expert": 0},
    ]
    paths = sorted(r["image_path"] for r in rows)  # a_drone, b_sat, c_drone, d_sat
    t_KQD = np.tile(np.array([1, 0], np.float32), (3, 4, 1))
    g_QK = np.tile(np.array([0.5, 0.5, 0.0], np.float32), (4, 1))
    # fused scores of query 0: b_sat 0.5 * 1.0 + 0.5 * 0.9 = 0.95, c_drone 0.5 * 0.0 + 0.5 * 0.5 = 0.25, d_sat 0
    v_KND = np.array([[[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 0], [0.9, 0], [0.5, 0], [0, 1]], [[0, 1]] * 4], np.float32)
    spec = pe_moe_job(tmp_path, tmp_path)
    assert [e.name for e in spec.model.experts] == ["satellite", "drone", "ground"]
    assert spec.train.mining_scope == "gallery"  # the paper's is the default
    model, train = spec.model, spec.train
    assert hard_negative_paths(model, train, 0, rows, paths, t_KQD, g_QK, v_KND)[0] == ["b_sat"]  # another platform
    own = train.model_copy(update={"mining_scope": "platform"})
    assert hard_negative_paths(model, own, 0, rows, paths, t_KQD, g_QK, v_KND)[0] == ["c_drone"]  # the drone expert's


def test_routing_accuracy_on_hand_made_gates() -> None:
    """Experts listed in another order than the platforms (ground, satellite, drone): the truth is each query's
    platform's expert index, not the platform's own position. Gates with known argmax: 3 of 5 right."""
    from geomoe.families.pe_moe.evaluate import routing_accuracy
    from geomoe.families.pe_moe.spec import PEMoEModelSpec

    experts = [{"name": n, "platforms": [n]} for n in ("ground", "satellite", "drone")]
    model = PEMoEModelSpec.model_validate({"experts": experts})
    gates = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    platforms = np.array(["ground", "satellite", "drone", "drone", "ground"])  # right, right, right, wrong, wrong
    assert routing_accuracy(gates, platforms, model) == pytest.approx(60.0)
    assert routing_accuracy(gates[:3], platforms[:3], model) == 100.0
