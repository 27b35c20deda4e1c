from epp.scheduling.plugins.subset_filter import SubsetFilter
from tests.unit.scheduling.sched_fakes import pool, request, state


def test_keeps_only_candidates() -> None:
    eps = pool(3)
    req = request(candidates=frozenset({"127.0.0.1:8002", "10.9.9.9:1"}))
    assert list(SubsetFilter().filter(state(), req, eps)) == [eps[2]]


def test_no_hint_keeps_everything() -> None:
    eps = pool(3)
    assert list(SubsetFilter().filter(state(), request(), eps)) == eps
