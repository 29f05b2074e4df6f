"""Expectations the tests derive by hand (imported by module name, like tiny_jobs)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def assert_share_interval(percent: float, bounds: Sequence[float], n: int) -> None:
    """``bounds``: the 95% bootstrap interval of a share (in %) of ``n`` queries. Its width must be about the
    binomial one, 2 x 1.96 x sqrt(p (1 - p) / n), within a factor of 2 (the bootstrap of a few queries is coarse);
    a share of 0 or 100% has no spread at all. An interval over another number of queries, a point in place of an
    interval, or an interval around another number fails; "the estimate lies in its interval" alone could not."""
    lo, hi = bounds
    p = percent / 100
    width = 100 * 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    if width == 0:
        assert lo == hi == percent, (percent, bounds, n)
        return
    assert lo <= percent <= hi and 0.5 * min(width, 100) <= hi - lo <= 2 * width, (percent, bounds, n, width)
