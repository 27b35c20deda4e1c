import math

import pytest

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


# --- speedAware ------------------------------------------------------------------------------

def _speed_setup(n: int, slow: dict[int, float]) -> tuple[PrefillLoadScorer, InflightTracker, Clock, list]:
    """A speed-aware scorer whose ledger has seen 3 completions per pod, pod i taking
    slow.get(i, 1) x 1.6 s."""
    clock = Clock()
    ctx = context()
    tracker = ctx.services[SERVICE_KEY] = InflightTracker(config=InflightConfig(prefill_window_s=0.5), clock=clock)
    eps = pool(n)
    for _ in range(3):
        start = clock.now
        handles = [(1.6 * slow.get(i, 1.0), tracker.dispatch([ep], 1548, 1500)) for i, ep in enumerate(eps)]
        for seconds, handle in sorted(handles, key=lambda h: h[0]):  # each completes after its time
            clock.now = start + seconds
            tracker.complete(handle)
    tracker.sweep()  # the slowest pod's sample is the newest: nothing has relaxed yet
    clock.now += 100.0  # the learning requests' prompts have faded (to below float precision)
    return PrefillLoadScorer(ctx=ctx, params=PrefillLoadScorer.Params(speed_aware=True)), tracker, clock, eps


def _pick(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def test_speed_aware_scores_equal_the_plain_ones_on_a_homogeneous_pool() -> None:
    scorer, tracker, clock, eps = _speed_setup(4, {})
    plain = PrefillLoadScorer(ctx=context())
    plain.tracker = tracker
    tracker.dispatch([eps[0]], 0, 1000)
    clock.now += 0.1
    tracker.dispatch([eps[2]], 0, 3000)
    assert tracker.slowness_of(eps) is None
    assert scorer.score(state(), request("x" * 800), eps) == plain.score(state(), request("x" * 800), eps)


def test_an_idle_slow_pod_waits_until_the_fast_ones_hold_a_prompt_each() -> None:
    scorer, tracker, _, eps = _speed_setup(3, {0: 2.0})
    prompt = request("x" * 4000)  # 1000 tokens
    assert _pick(scorer.score(state(), prompt, eps)) == 1  # all idle: a fast pod
    tracker.dispatch([eps[1]], 0, 1000)
    assert _pick(scorer.score(state(), prompt, eps)) == 2
    tracker.dispatch([eps[2]], 0, 1000)
    # Fast pods: (1000 + 1000) x 1, slow idle pod: (0 + 1000) x 2: at best a tie.
    scores = scorer.score(state(), prompt, eps)
    assert scores[0] <= scores[1] == scores[2]
    tracker.dispatch([eps[1]], 0, 1000)
    tracker.dispatch([eps[2]], 0, 1000)
    assert _pick(scorer.score(state(), prompt, eps)) == 0  # now the slow pod is the quickest start


def _share_of_slow_pod(speed_aware: bool) -> float:
    """6 requests/s of 1,500-token prompts for 60 s on 4 pods, pod 0 twice as slow; each pod
    prefills one prompt at a time (0.4 s, 0.8 s on pod 0) then decodes 48 tokens (1.2 s,
    2.4 s); the ledger is charged at dispatch and released at completion, as in the server."""
    clock = Clock()
    ctx = context()
    tracker = ctx.services[SERVICE_KEY] = InflightTracker(config=InflightConfig(prefill_window_s=0.5), clock=clock)
    scorer = PrefillLoadScorer(ctx=ctx, params=PrefillLoadScorer.Params(speed_aware=speed_aware))
    eps = pool(4)
    speed = [2.0, 1.0, 1.0, 1.0]
    free_at = [clock.now] * 4
    pending: list[tuple[float, object]] = []
    picks = [0] * 4
    prompt = request("x" * 6000)
    for k in range(360):
        clock.now = 50.0 + k / 6
        for done in [p for p in pending if p[0] <= clock.now]:
            saved, clock.now = clock.now, done[0]
            tracker.complete(done[1])  # type: ignore[arg-type]
            clock.now = saved
            pending.remove(done)
        tracker.sweep()
        i = _pick(scorer.score(state(), prompt, eps))
        picks[i] += 1
        handle = tracker.dispatch([eps[i]], 1548, 1500)
        start = max(clock.now, free_at[i])
        free_at[i] = start + 0.4 * speed[i]
        pending.append((free_at[i] + 1.2 * speed[i], handle))
    return picks[0] / sum(picks)


def test_the_slow_pod_gets_fewer_requests() -> None:
    blind, aware = _share_of_slow_pod(False), _share_of_slow_pod(True)
    assert 0.2 <= blind <= 0.3  # speed-blind: about a quarter, more than it can prefill
    assert aware <= blind / 2  # the fast pods absorb what the slow one cannot prefill


def test_a_burst_never_funnels_onto_one_pod() -> None:
    # 12 requests at the same instant, pod 0 known to be 2x slower: the ledger moves with
    # every dispatch, so the burst spreads over the pool (the slow pod taking its share last).
    scorer, tracker, _, eps = _speed_setup(4, {0: 2.0})
    picks = [0] * 4
    for _ in range(12):
        i = _pick(scorer.score(state(), request("x" * 6000), eps))
        picks[i] += 1
        tracker.dispatch([eps[i]], 1548, 1500)
    assert max(picks) <= 4
    assert picks[0] >= 1 and min(picks[1:]) >= 3


def test_a_slow_pods_prompts_fade_over_a_longer_window() -> None:
    # A pod 2x slower works through a prompt in twice the time: with speedAware its prompts
    # fade over 2 x the window, and count twice (as does the prompt being placed).
    scorer, tracker, clock, eps = _speed_setup(2, {0: 2.0})
    tracker.dispatch(eps, 0, 1000)
    clock.now += 0.5
    loads = tracker.recent_prompt_tokens_of(eps, clock())
    assert loads == pytest.approx([1000 * math.exp(-0.5), 1000 * math.exp(-1)])
    slow, fast = (loads[0] + 100) * 2.0, loads[1] + 100
    assert scorer.score(state(), request("x" * 400), eps) == [0.0, 1.0]
    assert slow > fast
    plain = InflightTracker(config=InflightConfig(prefill_window_s=0.5), clock=clock)
    plain.dispatch(eps, 0, 1000)
    clock.now += 0.5
    assert plain.recent_prompt_tokens_of(eps, clock()) == pytest.approx([1000 * math.exp(-1)] * 2)  # speed-blind


def test_engine_latency_is_off_by_default_and_the_config_can_turn_it_on() -> None:
    from epp.config.loader import parse_scheduler_config

    for extra, learns in (("", False), ("\n    engineLatency: true", True)):
        ctx = context()
        tracker = ctx.services[SERVICE_KEY] = InflightTracker()
        parse_scheduler_config(f"""
plugins:
- type: prefill-load-scorer
  parameters:
    speedAware: true{extra}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefill-load-scorer
  - pluginRef: max-score-picker
""", ctx)
        assert tracker.learn_from_engine_latency is learns
