from epp.scheduling.plugins.queue_scorer import QueueScorer
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def test_shorter_queue_scores_higher_min_max_normalised() -> None:
    eps = [endpoint("a", queue=0), endpoint("b", queue=5), endpoint("c", queue=10)]
    assert QueueScorer().score(state(), request(), eps) == [1.0, 0.5, 0.0]


def test_equal_queues_are_neutral() -> None:
    eps = [endpoint("a", queue=3), endpoint("b", queue=3)]
    assert QueueScorer().score(state(), request(), eps) == [1.0, 1.0]


def test_single_endpoint_scores_one() -> None:
    assert QueueScorer().score(state(), request(), [endpoint("a", queue=42)]) == [1.0]
