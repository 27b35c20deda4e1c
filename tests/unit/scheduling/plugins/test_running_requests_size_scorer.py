from epp.scheduling.plugins.running_requests_size_scorer import RunningRequestsSizeScorer
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def test_fewer_running_requests_scores_higher() -> None:
    eps = [endpoint("a", running=2), endpoint("b", running=10), endpoint("c", running=6)]
    assert RunningRequestsSizeScorer().score(state(), request(), eps) == [1.0, 0.0, 0.5]


def test_inflight_counts_when_the_scrape_lags() -> None:
    # The scrape says both idle, but this EPP already sent 4 requests to "b".
    eps = [endpoint("a", running=0, inflight=0), endpoint("b", running=0, inflight=4)]
    assert RunningRequestsSizeScorer().score(state(), request(), eps) == [1.0, 0.0]


def test_inflight_and_scrape_are_not_double_counted() -> None:
    eps = [endpoint("a", running=4, inflight=4), endpoint("b", running=0, inflight=4)]
    assert RunningRequestsSizeScorer().score(state(), request(), eps) == [1.0, 1.0]


def test_use_inflight_false_is_pure_gie() -> None:
    scorer = RunningRequestsSizeScorer(params=RunningRequestsSizeScorer.Params(use_inflight=False))
    eps = [endpoint("a", running=0, inflight=9), endpoint("b", running=3)]
    assert scorer.score(state(), request(), eps) == [1.0, 0.0]
