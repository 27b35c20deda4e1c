from epp.datastore import Endpoint
from epp.datastore.endpoint import EndpointMetrics
from epp.scheduling.plugins.assumed_load import AssumedLoad
from epp.scheduling.plugins.queue_scorer import QueueScorer
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult


def _req(prompt: str) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", target_model="m", prompt=prompt, max_tokens=100)


def test_picked_pod_looks_busier_until_the_next_scrape() -> None:
    a = Endpoint(name="a", address="127.0.0.1", port=1)
    b = Endpoint(name="b", address="127.0.0.1", port=2)
    for ep in (a, b):
        ep.metrics = EndpointMetrics(num_gpu_blocks=100, block_size=16)
    plugin, scorer = AssumedLoad(), QueueScorer()
    assert scorer.score(CycleState(), _req("x"), [a, b]) == [1.0, 1.0]
    plugin.pre_request(CycleState(), _req("y" * 400), SchedulingResult({"default": ProfileRunResult([a])}, "default"))
    assert a.metrics.waiting_queue_size == 1
    assert a.metrics.kv_cache_usage == (100 + 100) / 1600
    # The next request of the burst now prefers the other pod.
    assert scorer.score(CycleState(), _req("x"), [a, b]) == [0.0, 1.0]
    a.metrics = EndpointMetrics(num_gpu_blocks=100, block_size=16)  # a scrape replaces the guess
    assert scorer.score(CycleState(), _req("x"), [a, b]) == [1.0, 1.0]


def test_unknown_cache_size_only_counts_the_queue() -> None:
    a = Endpoint(name="a", address="127.0.0.1", port=1)
    a.metrics = EndpointMetrics(num_gpu_blocks=0)
    AssumedLoad().pre_request(CycleState(), _req("y" * 400), SchedulingResult({"p": ProfileRunResult([a])}, "p"))
    assert (a.metrics.waiting_queue_size, a.metrics.kv_cache_usage) == (1, 0.0)
