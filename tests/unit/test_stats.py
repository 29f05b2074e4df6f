"""Intervals that mean what they say: the bootstrap agrees with naive index resampling, covers a known truth about
95% of the time, pairs models on the same queries, and calls a difference only when its interval excludes 0."""

from __future__ import annotations

import numpy as np
import pytest

from geomoe.core import stats
from geomoe.core.metrics import capped_ranks, localization_metrics, localization_values, recall_at_k, recall_values


def naive_bootstrap(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The textbook reference: resample query indices with replacement, take the mean."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    return np.asarray(values)[picks].mean(axis=1)


@pytest.mark.parametrize(
    "values",
    [
        100.0 * (np.random.default_rng(0).random(80) < 0.3),  # hits: the multinomial path (2 distinct values)
        np.random.default_rng(1).integers(0, 11, 120).astype(float),  # capped ranks: 11 distinct values
        np.random.default_rng(2).beta(2, 3, 400),  # IoUs: about n distinct values, resampled by index
    ],
    ids=["hits", "ranks", "iou"],
)
def test_the_bootstrap_matches_naive_resampling(values: np.ndarray) -> None:
    ours = stats.bootstrap_means(values, resamples=20_000, seed=3)[:, 0]
    naive = naive_bootstrap(values, 20_000, seed=4)
    spread = naive.std()
    assert abs(ours.mean() - naive.mean()) < 0.05 * spread  # same centre (the sample mean)
    assert ours.std() == pytest.approx(spread, rel=0.05)  # same spread: std / sqrt(n)
    for q in (0.025, 0.975):
        assert abs(np.quantile(ours, q) - np.quantile(naive, q)) < 0.1 * spread
    assert ours.mean() == pytest.approx(values.mean(), abs=0.05 * spread)


def test_a_metrics_interval_depends_only_on_its_own_values_not_on_other_metrics_or_query_order() -> None:
    """Two runs with the same R@1 values but different R@10 values report the same R@1 interval (resampled
    jointly they did not: 18.15 [14.3, 22.0] against [14.0, 22.6]); a permutation of the queries changes
    nothing, on the multinomial path and on the by-index one."""
    rng = np.random.default_rng(5)
    r1, r10 = 100.0 * (rng.random(336) < 0.18), 100.0 * (rng.random(336) < 0.6)
    other_r10 = r10.copy()
    other_r10[:20] = 100.0 - other_r10[:20]
    assert stats.intervals({"R@1": r1, "R@10": r10})["R@1"] == stats.intervals({"R@1": r1, "R@10": other_r10})["R@1"]
    iou = rng.beta(2, 3, 300)
    order = rng.permutation(300)
    assert stats.intervals({"mIoU": iou}) == stats.intervals({"mIoU": iou[order]})
    assert stats.intervals({"R@1": r1}) == stats.intervals({"R@1": r1[rng.permutation(336)]})


def test_bootstrap_intervals_cover_a_known_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    draws, n, truth = 400, 300, 0.3
    covered_hits, covered_iou = 0, 0
    for i in range(draws):
        hits = 100.0 * (rng.random(n) < truth)
        lo, hi = stats.interval(hits, seed=i)
        covered_hits += lo <= 100.0 * truth <= hi
        iou = rng.beta(2, 3, n)  # mean 0.4
        lo, hi = stats.interval(iou, seed=i)
        covered_iou += lo <= 0.4 <= hi
    # binomial noise of 400 draws at 95%: std 1.1 points; percentile intervals run a little short at n = 300
    assert 0.92 <= covered_hits / draws <= 0.98
    assert 0.92 <= covered_iou / draws <= 0.98


def test_the_multinomial_path_is_fast_at_the_geotext_test_size() -> None:
    import time

    ranks = np.random.default_rng(0).integers(0, 11, 190_000)
    start = time.perf_counter()
    found = stats.intervals(recall_values(ranks, (1, 5, 10)))
    assert time.perf_counter() - start < 10  # about 0.3 s on 2 cores; the naive way holds 190M indices
    assert found["R@1"][0] < 100 * np.mean(ranks < 1) < found["R@1"][1]


def test_a_paired_difference_sees_what_two_independent_intervals_cannot() -> None:
    """Two models that agree on most queries: model a also gets 3% of the queries b misses. Their own intervals
    overlap, the paired one excludes 0."""
    rng = np.random.default_rng(5)
    n = 2000
    b = 100.0 * (rng.random(n) < 0.3)
    a = b.copy()
    a[np.flatnonzero(b == 0)[: int(0.03 * n)]] = 100.0
    a_lo, b_hi = stats.interval(a)[0], stats.interval(b)[1]
    assert a_lo < b_hi  # the unpaired intervals overlap
    d = stats.paired_difference(a, b)
    assert d.delta == pytest.approx(3.0) and d.significant and d.lo > 0
    same = stats.paired_difference(b, b)
    assert same.delta == 0 and not same.significant
    with pytest.raises(ValueError, match="same queries"):
        stats.paired_difference(a, b[:-1])


@pytest.mark.parametrize(
    ("paper", "ours", "expected"),
    [
        (+0.5, stats.Difference(2.0, 1.0, 3.0), "reproduced"),
        (-0.5, stats.Difference(-2.0, -3.0, -1.0), "reproduced"),
        (+0.5, stats.Difference(-2.0, -3.0, -1.0), "not reproduced"),
        (+0.5, stats.Difference(1.0, -0.5, 2.5), "inconclusive"),
        (0.0, stats.Difference(0.2, -0.5, 0.9), "inconclusive"),
        (0.0, stats.Difference(2.0, 1.0, 3.0), "not reproduced"),
    ],
)
def test_verdicts(paper: float, ours: stats.Difference, expected: str) -> None:
    assert stats.verdict(paper, ours) == expected


def test_per_query_values_average_to_the_reported_metrics() -> None:
    rng = np.random.default_rng(9)
    ranks = rng.integers(-1, 30, 500)
    reported = recall_at_k(ranks, (1, 5, 10))
    values = recall_values(ranks, (1, 5, 10))
    assert {k: values[k].mean() for k in reported} == pytest.approx(reported)
    assert values["Score"].mean() == pytest.approx((reported["R@1"] + reported["R@10"]) / 2)
    capped = np.array(capped_ranks(ranks, 10))  # what a result file keeps: enough for every K <= 10
    assert capped.max() == 10 and recall_at_k(capped, (1, 5, 10)) == pytest.approx(reported)
    pred = rng.random((50, 4)) * 100
    pred[:, 2:] += pred[:, :2]
    gt = pred + rng.normal(0, 10, pred.shape)
    sizes = np.full((50, 2), 200.0)
    from geomoe.core.metrics import clamped_iou

    per_sample = localization_values(clamped_iou(pred, gt, sizes))
    assert {k: v.mean() for k, v in per_sample.items()} == pytest.approx(localization_metrics(pred, gt, sizes))


def test_format_interval() -> None:
    assert stats.format_interval(12.345, [10.0, 14.71]) == "12.35 [10.0, 14.7]"
    assert stats.format_interval(12.345, None) == "12.35"
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and stats.mean_std([4.0]) == (4.0, 0.0)


def test_seeds_are_pooled_per_query_only_over_the_same_queries() -> None:
    a, b = np.array([0.0, 100.0, 100.0]), np.array([100.0, 100.0, 0.0])
    np.testing.assert_allclose(stats.pooled_over_seeds([a, b], ["q", "q"]), [50.0, 100.0, 50.0])
    assert stats.pooled_over_seeds([a, b], ["q", "other queries"]) is None
    assert stats.pooled_over_seeds([a, b[:2]], [None, None]) is None  # no query set recorded: their number decides
    assert stats.pooled_over_seeds([a, None], ["q", "q"]) is None
    assert stats.query_set(["x", "y"]) != stats.query_set(["y", "x"])  # order matters: values are paired by position


def _trained(rng: np.random.Generator, difficulty: np.ndarray, gain: float = 0.0) -> np.ndarray:
    """One training run's per-query hits: the query's difficulty, this run's own shift (training randomness that
    moves every query a little) and its own per-query noise."""
    logit = difficulty + gain + 0.3 * rng.standard_normal() + 0.8 * rng.standard_normal(len(difficulty))
    return 100.0 * (rng.random(len(difficulty)) < 1 / (1 + np.exp(-logit)))


def test_a_seeded_interval_keeps_a_vs_a_false_alarms_near_5_percent_where_queries_alone_do_not() -> None:
    """A/A: two configurations that are the same, 3 seeds each, on the same 336 queries. The bootstrap over queries
    calls a difference in about a third of the cases (the two trainings differ, and it treats them as fixed); the
    seeded interval about 5% of the time. A real gain is still seen."""
    rng = np.random.default_rng(7)
    alarms = {"queries": 0, "seeds": 0}
    runs = 120
    for _ in range(runs):
        difficulty = rng.normal(-1.5, 1.5, 336)
        a = np.stack([_trained(rng, difficulty) for _ in range(3)])
        b = np.stack([_trained(rng, difficulty) for _ in range(3)])
        alarms["queries"] += stats.paired_difference(a.mean(0), b.mean(0), resamples=200).significant
        seeded = stats.seeded_difference(a, b, resamples=200)
        alarms["seeds"] += seeded.significant
        assert seeded.with_seeds and abs(seeded.delta - (a.mean() - b.mean())) < 1e-9
    assert alarms["queries"] / runs > 0.2 and alarms["seeds"] / runs <= 0.1, alarms
    difficulty = rng.normal(-1.5, 1.5, 336)
    better = np.stack([_trained(rng, difficulty, gain=1.0) for _ in range(3)])
    base = np.stack([_trained(rng, difficulty) for _ in range(3)])
    assert stats.seeded_difference(better, base).lo > 0


def test_a_seeded_difference_needs_two_seeds_a_side_and_uses_students_t() -> None:
    with pytest.raises(ValueError, match=">= 2 seeds"):
        stats.seeded_difference(np.zeros((1, 10)), np.zeros((3, 10)))
    assert stats.t_975(1) == 12.706 and stats.t_975(2.9) == 4.303 and stats.t_975(35) == 2.042
    assert stats.t_975(float("inf")) == 1.96
    same = np.full((3, 50), 100.0)
    assert stats.seeded_difference(same, same) == stats.Difference(0.0, 0.0, 0.0, with_seeds=True, se=0.0)
    with pytest.raises(ValueError, match="finite"):
        stats.seeded_difference(np.full((2, 5), np.nan), np.zeros((2, 5)))
