from epp.scheduling.plugins.low_queue_filter import LowQueueFilter
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def test_drops_endpoints_above_threshold() -> None:
    eps = [endpoint("a", queue=2), endpoint("b", queue=3), endpoint("c", queue=9)]
    flt = LowQueueFilter(params=LowQueueFilter.Params(threshold=3))
    assert [e.name for e in flt.filter(state(), request(), eps)] == ["a", "b"]


def test_none_below_threshold_gives_empty_or_all_with_fallback() -> None:
    eps = [endpoint("a", queue=200), endpoint("b", queue=300)]
    assert list(LowQueueFilter().filter(state(), request(), eps)) == []
    fallback = LowQueueFilter(params=LowQueueFilter.Params(fallback_to_all=True))
    assert list(fallback.filter(state(), request(), eps)) == eps
