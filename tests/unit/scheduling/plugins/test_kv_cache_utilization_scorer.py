import pytest

from epp.scheduling.plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def test_score_is_free_fraction_of_kv_cache() -> None:
    eps = [endpoint("a", kv=0.0), endpoint("b", kv=0.25), endpoint("c", kv=1.0)]
    assert KVCacheUtilizationScorer().score(state(), request(), eps) == pytest.approx([1.0, 0.75, 0.0])


def test_out_of_range_usage_is_clamped() -> None:
    eps = [endpoint("a", kv=1.5), endpoint("b", kv=-0.5)]
    assert KVCacheUtilizationScorer().score(state(), request(), eps) == [0.0, 1.0]
