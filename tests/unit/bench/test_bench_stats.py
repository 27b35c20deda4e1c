import math

import pytest

from epp.bench.stats import Distribution, percentile, ratio


def test_percentile_interpolates_linearly_like_numpy() -> None:
    samples = [1.0, 2.0, 3.0, 4.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(samples, 50) == pytest.approx(2.5)
    assert percentile(samples, 90) == pytest.approx(3.7)  # numpy.percentile(..., 90) == 3.7


def test_percentile_ignores_input_order_and_handles_one_sample() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_q_is_an_error() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_distribution_summarises_and_scales() -> None:
    d = Distribution.of([float(i) for i in range(1, 101)])
    assert d.count == 100
    assert d.mean == pytest.approx(50.5)
    assert d.p50 == pytest.approx(50.5)
    assert d.p99 == pytest.approx(99.01)
    half = d.scaled(0.5)
    assert half.p50 == pytest.approx(25.25) and half.count == 100


def test_empty_distribution_is_all_nan() -> None:
    d = Distribution.of([])
    assert d.count == 0 and math.isnan(d.p50) and math.isnan(d.mean)


def test_ratio_guards_missing_values() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))
