import pytest

from epp.datastore.inflight import SERVICE_KEY, InflightConfig, InflightTracker
from epp.scheduling.plugins.active_request_scorer import ActiveRequestScorer, parse_duration
from epp.scheduling.registry import ConfigError, parse_params
from tests.unit.scheduling.sched_fakes import context, endpoint, request, state


def test_fewer_active_requests_scores_higher_as_llm_d() -> None:
    # llm-d: (max - count) / max; nothing in flight scores 1.
    eps = [endpoint("a", inflight=4), endpoint("b", inflight=0), endpoint("c", inflight=1)]
    assert ActiveRequestScorer().score(state(), request(), eps) == [0.0, 1.0, 0.75]


def test_other_workers_requests_count_too() -> None:
    a, b = endpoint("a", inflight=1), endpoint("b", inflight=1)
    b.peer_inflight = 3
    assert ActiveRequestScorer().score(state(), request(), [a, b]) == [0.75, 0.0]


def test_idle_pool_scores_everyone_one() -> None:
    eps = [endpoint("a"), endpoint("b")]
    assert ActiveRequestScorer().score(state(), request(), eps) == [1.0, 1.0]


def test_scraped_queue_is_not_what_it_reads() -> None:
    # The ledger, not the scrape: a pod with a long scraped queue but nothing from us scores 1.
    eps = [endpoint("a", queue=50, running=10), endpoint("b", inflight=2)]
    assert ActiveRequestScorer().score(state(), request(), eps) == [1.0, 0.0]


def test_request_timeout_shortens_the_shared_tracker_timeout() -> None:
    ctx = context()
    tracker = ctx.services[SERVICE_KEY] = InflightTracker(config=InflightConfig(request_timeout_s=300))
    params = parse_params(ActiveRequestScorer.Params, {"requestTimeout": "1m30s"}, "t.yaml")
    ActiveRequestScorer(name="ar", params=params, ctx=ctx)
    assert tracker.config.request_timeout_s == 90.0


@pytest.mark.parametrize("text", ["", "10", "2 m", "1x", "-1s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_bad_request_timeout_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"t.yaml: parameter 'requestTimeout' must be a duration"):
        parse_params(ActiveRequestScorer.Params, {"requestTimeout": "soon"}, "t.yaml")


def test_include_scraped_sees_load_the_ledger_does_not() -> None:
    # Pod a is busy with another replica's traffic (scrape: 12 waiting); pod b has 2 of ours,
    # which the scrape already shows (no double counting).
    eps = [endpoint("a", queue=12, running=4), endpoint("b", running=2, inflight=2)]
    scorer = ActiveRequestScorer(params=ActiveRequestScorer.Params(include_scraped=True))
    assert scorer.score(state(), request(), eps) == [0.0, 0.875]
