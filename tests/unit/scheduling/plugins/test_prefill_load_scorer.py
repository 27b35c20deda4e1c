import math

from epp.datastore.inflight import SERVICE_KEY, InflightConfig, InflightTracker
from epp.scheduling.plugins.prefill_load_scorer import PrefillLoadScorer
from tests.unit.scheduling.sched_fakes import context, pool, request, state


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def _setup() -> tuple[PrefillLoadScorer, InflightTracker, Clock]:
    clock = Clock()
    ctx = context()
    tracker = ctx.services[SERVICE_KEY] = InflightTracker(config=InflightConfig(prefill_window_s=0.5), clock=clock)
    return PrefillLoadScorer(ctx=ctx), tracker, clock


def test_pod_sent_a_prompt_most_recently_scores_lowest() -> None:
    scorer, tracker, clock = _setup()
    eps = pool(3)
    tracker.dispatch([eps[0]], 0, 1000)
    clock.now += 0.2
    tracker.dispatch([eps[1]], 0, 1000)
    clock.now += 0.2
    # pod 2 got nothing; pod 0's prompt (0.4 s old) has faded more than pod 1's (0.2 s old)
    scores = scorer.score(state(), request(), eps)
    load0, load1 = 1000 * math.exp(-0.4 / 0.5), 1000 * math.exp(-0.2 / 0.5)
    assert scores[1:] == [0.0, 1.0]
    assert math.isclose(scores[0], (load1 - load0) / load1)


def test_estimate_decays_exponentially_and_adds_up() -> None:
    _, tracker, clock = _setup()
    ep = pool(1)[0]
    tracker.dispatch([ep], 0, 1000)
    clock.now += 0.5
    assert math.isclose(tracker.recent_prompt_tokens(ep), 1000 * math.exp(-1))
    tracker.dispatch([ep], 0, 500)
    assert math.isclose(tracker.recent_prompt_tokens(ep), 1000 * math.exp(-1) + 500)


def test_equal_prompts_rotate_like_round_robin() -> None:
    scorer, tracker, clock = _setup()
    eps = pool(4)
    picks = []
    for _ in range(12):
        scores = scorer.score(state(), request(), eps)
        best = max(range(4), key=lambda i: (scores[i], -i))
        picks.append(best)
        tracker.dispatch([eps[best]], 0, 1000)
        clock.now += 0.1  # requests keep coming while earlier prompts still prefill
    assert picks == [0, 1, 2, 3] * 3


def test_other_workers_recent_prompts_count() -> None:
    scorer, _, _ = _setup()
    eps = pool(2)
    eps[0].peer_recent_prompt_tokens = 800.0
    assert scorer.score(state(), request(), eps) == [0.0, 1.0]


def test_without_a_server_ledger_every_endpoint_is_equal() -> None:
    assert PrefillLoadScorer().score(state(), request(), pool(3)) == [1.0, 1.0, 1.0]


def test_a_queue_we_did_not_send_counts_as_prefill_backlog() -> None:
    scorer, tracker, _ = _setup()
    eps = pool(3)
    eps[0].metrics.waiting_queue_size = 12  # another replica's requests, unknown to our ledger
    tracker.dispatch([eps[1]], 0, 400)  # one of ours, just sent
    # 12 waiting x this request's 100 prompt tokens = 1200 > 400 on pod 1 > 0 on pod 2
    assert scorer.score(state(), request("x" * 400), eps) == [0.0, 800 / 1200, 1.0]
