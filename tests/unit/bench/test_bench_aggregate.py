"""Median / spread aggregation of several runs of one benchmark cell."""

import math

import pytest

from epp.bench.aggregate import aggregate_runs, median_distribution, median_or_nan, min_max, spread_value
from epp.bench.runner import RouterPhaseResult
from epp.bench.stats import Distribution


def run(p50: float, p99: float, hit: float = 0.5, repeat: int = 0, skipped: str = "") -> RouterPhaseResult:
    ttft = Distribution(10, p50, p50, p99 * 0.9, p99)
    return RouterPhaseResult("envoy-rr", "Envoy rr", False, "no-sharing", 6.0, sent=10, ok=9, errors=1, ttft=ttft,
                             itl=Distribution.of([0.01]), e2e=Distribution(10, 1.0, 1.0, 1.5, 2.0),
                             output_tokens_per_s=100.0 + repeat, prefix_hit_rate=hit, pod_share_max=0.3,
                             repeat=repeat, skipped=skipped, error_examples=["HTTP 503"] if repeat == 1 else [])


def test_median_and_spread_of_three_runs() -> None:
    row = aggregate_runs([run(0.30, 0.9, 0.4, 0), run(0.50, 0.7, 0.6, 1), run(0.40, 1.1, 0.5, 2)])
    assert row.runs == 3
    assert row.ttft.p50 == 0.40 and row.ttft.p99 == 0.9  # medians per metric, not one "median run"
    assert row.spread["ttft.p50"] == [0.30, 0.50] and row.spread["ttft.p99"] == [0.7, 1.1]
    assert row.spread["prefix_hit_rate"] == [0.4, 0.6]
    assert (row.sent, row.ok, row.errors) == (30, 27, 3)  # counts add up over the runs
    assert row.ttft.count == 30
    assert row.output_tokens_per_s == 101.0
    assert row.error_examples == ["HTTP 503"]


def test_even_run_count_takes_the_mean_of_the_middle_two() -> None:
    row = aggregate_runs([run(0.2, 1.0), run(0.4, 2.0)])
    assert row.ttft.p50 == pytest.approx(0.3) and row.ttft.p99 == pytest.approx(1.5)


def test_failed_runs_are_left_out_and_counted() -> None:
    row = aggregate_runs([run(0.2, 1.0), run(0.0, 0.0, skipped="failed: StackError: port"), run(0.4, 2.0)])
    assert row.runs == 2 and not row.skipped
    assert row.ttft.p50 == pytest.approx(0.3)
    assert "run failed: failed: StackError: port" in row.error_examples
    none = aggregate_runs([run(0, 0, skipped="not installed"), run(0, 0, skipped="not installed")])
    assert none.skipped == "not installed" and none.runs == 0


def test_nan_values_do_not_poison_the_median() -> None:
    assert median_or_nan([math.nan, 1.0, 3.0]) == 2.0
    assert math.isnan(median_or_nan([math.nan]))
    assert min_max([math.nan, 2.0, 1.0]) == [1.0, 2.0]
    assert all(math.isnan(v) for v in min_max([]))
    d = median_distribution([Distribution.of([]), Distribution.of([1.0, 3.0])])
    assert d.count == 2 and d.p50 == 2.0


def test_aggregate_refuses_mixed_cells_and_nothing() -> None:
    other = run(0.1, 0.2)
    other.router = "vr-rr"
    with pytest.raises(ValueError, match="different routers"):
        aggregate_runs([run(0.1, 0.2), other])
    with pytest.raises(ValueError, match="at least one run"):
        aggregate_runs([])


def test_spread_value_reads_nested_and_flat_metrics() -> None:
    r = run(0.25, 0.75, hit=0.6)
    assert spread_value(r, "ttft.p99") == 0.75 and spread_value(r, "prefix_hit_rate") == 0.6
