"""How sure a result is (core, NumPy only): percentile bootstrap intervals over queries, paired differences
between two models on the same queries, and the verdict of an ablation row.

Every metric reported here is a mean over queries of a per-query value: R@K of a 0/100 hit, the Score of
(hit@1 + hit@10) / 2, acc@t of a 0/100 IoU test, mIoU of 100 * IoU. A bootstrap resample draws n queries with
replacement, that is a multinomial(n; 1/n, ..., 1/n) count per query; queries whose value rows are equal can be
merged into one category with their share of the probability. So the resampled means are drawn exactly as a
naive resampling of indices would draw them, at a cost that grows with the distinct value rows (at most a few
dozen for hits and ranks) instead of with n: 1,000 resamples of 190k queries take 0.3 s. Continuous
values (IoU) have about n distinct rows and are resampled by index, in chunks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
MULTINOMIAL_ROWS = 256  # up to this many distinct value rows, draw category counts; beyond, draw indices
CHUNK_ELEMENTS = 1 << 24  # indices drawn at once when resampling by index (128 MiB of int64)


def bootstrap_means(values_QM: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, M) means of ``values_QM`` (Q queries x M metrics, or Q values) over resampled queries."""
    values = np.asarray(values_QM, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    n = len(values)
    if n == 0:
        raise ValueError("no queries to resample")
    rng = np.random.default_rng(seed)
    rows, counts = np.unique(values, axis=0, return_counts=True)
    if len(rows) <= MULTINOMIAL_ROWS:
        draws = rng.multinomial(n, counts / n, size=resamples)
        means: np.ndarray = draws @ rows / n
        return means
    values = values[np.lexsort(values.T[::-1])]  # the same values in any query order draw the same resamples
    out = np.empty((resamples, values.shape[1]))
    step = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, resamples, step):
        picks = rng.integers(0, n, size=(min(step, resamples - start), n))
        out[start : start + len(picks)] = values[picks].mean(axis=1)
    return out


def _bounds(means_BM: np.ndarray, level: float) -> np.ndarray:
    tail = (1.0 - level) / 2.0
    bounds: np.ndarray = np.quantile(means_BM, [tail, 1.0 - tail], axis=0).T
    return bounds


def interval(
    values_Q: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of the mean of ``values_Q``."""
    lo, hi = _bounds(bootstrap_means(values_Q, resamples, seed), level)[0]
    return float(lo), float(hi)


def intervals(
    columns: Mapping[str, np.ndarray], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, list[float]]:
    """Name -> [lo, hi] for each column of per-query values, each column resampled on its own with ``seed``: a
    metric's interval depends only on its own values, not on the other columns (resampled jointly, R@1's interval
    moved when R@10's values did) nor on the order of the queries."""
    if len({len(v) for v in columns.values()}) > 1:
        raise ValueError(
            f"intervals need one value per query in every column: lengths {[len(v) for v in columns.values()]}"
        )
    bounds = {k: interval(np.asarray(v, dtype=np.float64), level, resamples, seed) for k, v in columns.items()}
    return {k: [round(lo, 2), round(hi, 2)] for k, (lo, hi) in bounds.items()}


@dataclass(frozen=True)
class Difference:
    """``a`` minus ``b`` on the same queries, with its paired-bootstrap interval."""

    delta: float
    lo: float
    hi: float
    with_seeds: bool = False  # the interval counts training randomness (seeded_difference), not only queries
    se: float | None = None  # the standard error behind the interval (where one is known)

    @property
    def significant(self) -> bool:
        """The interval excludes 0: only then is a difference called out."""
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return f"{self.delta:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


def paired_difference(
    a_Q: np.ndarray, b_Q: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> Difference:
    """mean(a) - mean(b) over the same queries, resampled together (the per-query difference, bootstrapped)."""
    a, b = np.asarray(a_Q, dtype=np.float64), np.asarray(b_Q, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same queries: {a.shape} vs {b.shape}")
    means = bootstrap_means(a - b, resamples, seed)
    lo, hi = _bounds(means, level)[0]
    return Difference(float(np.mean(a - b)), float(lo), float(hi), se=float(means[:, 0].std(ddof=1)))


# Student's t, 97.5% quantile, for 1..30 degrees of freedom (then 40, 60, 120 and the normal's 1.96).
T_975 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131),
    *(2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)


def t_975(df: float) -> float:
    """Student's t 97.5% quantile; a fractional df is rounded down (a wider interval: the safe side)."""
    if df >= 1000:
        return 1.960
    k = math.floor(df)
    if k < 1:
        raise ValueError(f"t needs at least 1 degree of freedom, got {df}")
    if k <= len(T_975):
        return T_975[k - 1]
    return 2.042 if k < 40 else 2.021 if k < 60 else 2.000 if k < 120 else 1.980  # each bracket's lower end


def seeded_difference(a_SQ: np.ndarray, b_SQ: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """a's mean minus b's on the same Q queries, each configuration trained with S >= 2 seeds (rows), with a 95%
    interval that counts training randomness as well as the choice of queries.

    The paired bootstrap over queries alone treats the two configurations' trained models as fixed: two
    trainings of one configuration then differ "significantly" whenever the queries are many. Here the variance
    is the bootstrap's over queries (of the per-query difference of the seed-averaged values) plus each side's
    spread between seeds, s^2 / S (s^2: the variance of one seed's mean over the queries); the interval is
    delta +- t * sqrt(variance), t at the Welch-Satterthwaite degrees of freedom (the query term has infinitely
    many). The per-query training noise enters both terms, which errs on the wide side."""
    a, b = np.atleast_2d(np.asarray(a_SQ, dtype=np.float64)), np.atleast_2d(np.asarray(b_SQ, dtype=np.float64))
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"a seeded difference needs >= 2 seeds a side on the same queries: {a.shape} vs {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a seeded difference needs finite values (a NaN would read as 'inconclusive')")
    pooled = a.mean(axis=0) - b.mean(axis=0)
    query_var = float(bootstrap_means(pooled, resamples, seed)[:, 0].var(ddof=1))
    seed_terms = [float(x.mean(axis=1).var(ddof=1)) / len(x) for x in (a, b)]
    total = query_var + sum(seed_terms)
    denominator = sum(u * u / (len(x) - 1) for u, x in zip(seed_terms, (a, b), strict=True))
    df = total * total / denominator if denominator > 0 else math.inf
    half = t_975(df) * math.sqrt(total)
    delta = float(pooled.mean())
    return Difference(delta, delta - half, delta + half, with_seeds=True, se=math.sqrt(total))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) over seeds."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def verdict(paper_delta: float, ours: Difference) -> str:
    """An ablation row against the previous one: "reproduced" when our paired interval excludes 0 on the paper's
    side, "not reproduced" when it excludes 0 on the other side, else "inconclusive"."""
    if paper_delta == 0:
        return "not reproduced" if ours.significant else "inconclusive"
    if not ours.significant:
        return "inconclusive"
    return "reproduced" if (ours.delta > 0) == (paper_delta > 0) else "not reproduced"


def pooled_over_seeds(arrays: list[np.ndarray | None], query_sets: list[str | None]) -> np.ndarray | None:
    """Each query's value averaged over seeds: None when a seed has no values or the seeds' queries differ
    (their query sets, or their number when none is recorded)."""
    if not arrays or any(a is None for a in arrays) or len(set(query_sets)) != 1:
        return None
    present = [np.asarray(a, dtype=np.float64) for a in arrays if a is not None]
    if len({len(a) for a in present}) != 1:
        return None
    pooled: np.ndarray = np.mean(np.stack(present), axis=0)
    return pooled


def query_set(keys: list[str]) -> str:
    """A fingerprint of which queries, in which order, per-query values belong to: paired comparisons and seed
    pooling only combine values with the same fingerprint."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def format_interval(mean: float, bounds: list[float] | tuple[float, float] | None) -> str:
    """``mean [lo, hi]`` (just the mean when there is no interval)."""
    if bounds is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} [{bounds[0]:.1f}, {bounds[1]:.1f}]"


def format_spread(mean: float, std: float, bounds: tuple[float, float] | None) -> str:
    """``mean ± std [lo, hi]`` over seeds, with the pooled interval when there is one."""
    text = f"{mean:.2f} ± {std:.2f}"
    return text if bounds is None else f"{text} [{bounds[0]:.1f}, {bounds[1]:.1f}]"
