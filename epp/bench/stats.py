"""Summary statistics of benchmark samples (latencies in seconds, rates, ratios)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    Same definition as numpy's default ("linear"), so numbers compare with other tools.
    An empty sample has no percentile: NaN, which the report prints as "-".
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(slots=True, frozen=True)
class Distribution:
    """p50 / p90 / p99 / mean of one metric; NaN fields when there were no samples."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(samples),
            mean=math.fsum(samples) / len(samples),
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
        )

    def scaled(self, factor: float) -> Distribution:
        """Every value multiplied by `factor` (e.g. wall seconds -> simulated-model seconds)."""
        return Distribution(self.count, self.mean * factor, self.p50 * factor, self.p90 * factor,
                            self.p99 * factor)


def ratio(value: float, reference: float) -> float:
    """value / reference; NaN when either is missing or the reference is zero."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return value / reference
