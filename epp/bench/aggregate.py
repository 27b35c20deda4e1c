"""Several runs of one (phase, router) cell -> one row: the median of each metric and the
min-max spread of the headline ones.

The report's numbers are medians of the runs (`statistics.median`: the middle run for an odd
count, the mean of the two middle runs for an even count). Request counts are summed, so
`ok/err` still tells how many requests stand behind a row. Runs that failed (a router that
did not start) are left out of the medians; the row says how many runs it has.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from epp.bench.stats import Distribution

# Row metrics whose min-max over the runs the report prints next to the median.
SPREAD_METRICS = ("ttft.p50", "ttft.p99", "e2e.p50", "prefix_hit_rate")

if TYPE_CHECKING:  # runner.py imports this module
    from epp.bench.runner import RouterPhaseResult


def median_or_nan(values: Sequence[float]) -> float:
    """Median of the non-NaN values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def min_max(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if not math.isnan(v)]
    return [min(finite), max(finite)] if finite else [math.nan, math.nan]


def spread_value(row: RouterPhaseResult, metric: str) -> float:
    """`metric` ("ttft.p99", "prefix_hit_rate", ...) of a row."""
    head, _, tail = metric.partition(".")
    value = getattr(row, head)
    return float(getattr(value, tail) if tail else value)


def median_distribution(distributions: Sequence[Distribution]) -> Distribution:
    if not distributions:
        return Distribution.of([])
    return Distribution(
        count=sum(d.count for d in distributions),
        mean=median_or_nan([d.mean for d in distributions]),
        p50=median_or_nan([d.p50 for d in distributions]),
        p90=median_or_nan([d.p90 for d in distributions]),
        p99=median_or_nan([d.p99 for d in distributions]),
    )


def aggregate_runs(samples: Sequence[RouterPhaseResult]) -> RouterPhaseResult:
    """One row from the runs of one router in one phase (all samples share router and phase)."""
    from epp.bench.runner import RouterPhaseResult

    if not samples:
        raise ValueError("aggregate_runs needs at least one run")
    first = samples[0]
    if any(s.router != first.router or s.workload != first.workload or s.rate != first.rate for s in samples):
        raise ValueError("aggregate_runs: samples of different routers or phases")
    good = [s for s in samples if not s.skipped]
    base = RouterPhaseResult(first.router, first.label, first.ours, first.workload, first.rate)
    if not good:
        base.skipped = first.skipped
        base.runs = 0
        return base
    failed = [s.skipped for s in samples if s.skipped]
    base.runs = len(good)
    base.sent = sum(s.sent for s in good)
    base.ok = sum(s.ok for s in good)
    base.errors = sum(s.errors for s in good)
    base.ttft = median_distribution([s.ttft for s in good])
    base.itl = median_distribution([s.itl for s in good])
    base.e2e = median_distribution([s.e2e for s in good])
    base.output_tokens_per_s = median_or_nan([s.output_tokens_per_s for s in good])
    base.prefix_hit_rate = median_or_nan([s.prefix_hit_rate for s in good])
    base.pod_share_max = median_or_nan([s.pod_share_max for s in good])
    base.error_examples = sorted({e for s in good for e in s.error_examples})[:3] + [
        f"run failed: {reason}" for reason in sorted(set(failed))][:2]
    base.router_warnings = sorted({w for s in good for w in s.router_warnings})[:3]
    base.spread = {m: min_max([spread_value(s, m) for s in good]) for m in SPREAD_METRICS}
    return base
