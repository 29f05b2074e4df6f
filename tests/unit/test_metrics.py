import numpy as np
import pytest

from geomoe.core.metrics import (
    box_iou,
    first_relevant_rank,
    localization_metrics,
    recall_at_k,
    retrieval_report,
    track4_score,
)


def naive_rank(scores: np.ndarray, qlab: np.ndarray, glab: np.ndarray) -> np.ndarray:
    """Reference: full stable sort by descending score, then the first relevant position."""
    out = []
    for q in range(len(qlab)):
        order = np.argsort(-scores[q], kind="stable")
        hits = np.nonzero(glab[order] == qlab[q])[0]
        out.append(int(hits[0]) if len(hits) else -1)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tie_levels", [3, 1000])
def test_rank_matches_naive_reference_with_ties(seed: int, tie_levels: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, tie_levels, size=(57, 41)).astype(np.float32)  # few levels -> many ties
    qlab, glab = rng.integers(0, 12, size=57), rng.integers(0, 10, size=41)  # some queries have no relevant
    expected = naive_rank(scores, qlab, glab)
    np.testing.assert_array_equal(first_relevant_rank(scores, qlab, glab, chunk=8), expected)
    assert (expected == -1).any()


def test_hand_made_ties_are_broken_by_gallery_index() -> None:
    scores = np.array([[0.5, 0.9, 0.9, 0.9]])
    assert first_relevant_rank(scores, np.array([7]), np.array([0, 1, 7, 7]))[0] == 1  # index 1 (0.9) first
    assert first_relevant_rank(scores, np.array([7]), np.array([7, 1, 2, 3]))[0] == 3
    assert first_relevant_rank(scores, np.array([7]), np.array([1, 7, 2, 3]))[0] == 0


def test_recall_and_score() -> None:
    ranks = np.array([0, 4, 9, 10, -1])
    r = recall_at_k(ranks, [1, 5, 10])
    assert r == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0}
    assert track4_score(r) == 40.0
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(np.array([]), [1])


def test_nan_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        first_relevant_rank(np.array([[np.nan]]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="do not match"):
        first_relevant_rank(np.zeros((2, 3)), np.array([0]), np.array([0, 1, 2]))


def test_retrieval_report_exact_vs_building() -> None:
    # images: 0,1 in building A (drone), 2 in building B (satellite); one caption per image
    scores = np.array(
        [
            [0.1, 0.9, 0.2],  # caption of image 0: top is image 1 (same building)
            [0.1, 0.8, 0.3],
            [0.9, 0.1, 0.5],
        ]
    )  # caption of image 2: top is image 0 (other building)
    report = retrieval_report(
        scores, np.array([0, 1, 2]), np.array(["A", "A", "B"]), np.array(["drone", "drone", "satellite"]), ks=(1, 2)
    )
    assert report["exact"]["t2i"]["R@1"] == pytest.approx(100 / 3)
    assert report["building"]["t2i"]["R@1"] == pytest.approx(200 / 3)
    assert report["building"]["t2i_by_platform"]["drone"]["R@1"] == 100.0
    assert report["building"]["t2i_by_platform"]["satellite"]["R@1"] == 0.0
    # image -> text: image 0's best caption is caption 2 (building B) -> miss at 1 in both protocols
    assert report["exact"]["i2t"]["R@1"] == pytest.approx(100 / 3)
    assert "score" not in report["exact"]


def test_box_iou_and_localization_metrics() -> None:
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 9]])
    gt = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(pred, gt), [1.0, 50 / 150, 0.0, 0.0])
    m = localization_metrics(pred, gt, np.array([[100, 100]] * 4))
    assert m["acc@0.25"] == 50.0 and m["acc@0.5"] == 25.0  # IoU 1/3 > 0.25 but not > 0.5
    assert m["mIoU"] == pytest.approx(100 * (1 + 1 / 3) / 4)


def test_boxes_are_clamped_to_the_tile() -> None:
    # a prediction spilling beyond a 10x10 tile is clamped before IoU, as in DetGeo
    m = localization_metrics(np.array([[5, 5, 20, 20]]), np.array([[5, 5, 10, 10]]), np.array([[10, 10]]))
    assert m["mIoU"] == pytest.approx(100.0)
