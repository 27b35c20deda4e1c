"""The vectorised hot path computes what the plain per-endpoint formulas compute, bit for bit.

Each test writes the formula the way the scorer's docstring states it (one endpoint at a
time, plain Python) as the reference, and compares the optimised code against it on a
randomised busy pool: ledger charges of different ages, peer-worker counts, scraped queues.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import SERVICE_KEY, InflightConfig, InflightTracker
from epp.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.prefill_load_scorer import PrefillLoadScorer
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.random_picker import RandomPicker
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint
from tests.unit.scheduling.sched_fakes import context, pool, request, scored, state


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _busy_pool(rng: random.Random, n: int, tracker: InflightTracker, clock: Clock) -> list[Endpoint]:
    eps = pool(n)
    for ep in eps:
        ep.metrics.waiting_queue_size = rng.randrange(0, 5)
        ep.metrics.running_requests = rng.randrange(0, 20)
        ep.peer_inflight = rng.randrange(0, 3)
        ep.peer_recent_prompt_tokens = rng.choice([0.0, rng.random() * 3000])
    for _ in range(3 * n):
        clock.now += rng.random() * 0.05
        tracker.dispatch([rng.choice(eps)], 300, rng.randrange(1, 4000))
    clock.now += 0.01
    return eps


def _reference_prefill_scores(tracker: InflightTracker, eps: list[Endpoint], req: LLMRequest) -> list[float]:
    # The scorer before vectorising: one tracker call per endpoint, then min-max normalised.
    now = tracker.clock()
    per_request = max(1, len(req.prompt_text()) // 4)
    loads = [max(tracker.recent_prompt_tokens(ep, now) + ep.peer_recent_prompt_tokens,
                 ep.metrics.waiting_queue_size * per_request) for ep in eps]
    low, high = min(loads), max(loads)
    if high - low <= 0:
        return [1.0] * len(loads)
    return [(high - load) / (high - low) for load in loads]


def test_prefill_load_scores_equal_the_per_endpoint_formula() -> None:
    rng = random.Random(5)
    for n in (1, 4, 64):
        clock = Clock()
        ctx = context()
        tracker = ctx.services[SERVICE_KEY] = InflightTracker(config=InflightConfig(prefill_window_s=0.5),
                                                              clock=clock)
        scorer = PrefillLoadScorer(ctx=ctx)
        eps = _busy_pool(rng, n, tracker, clock)
        req = request("x" * 2048)
        assert scorer.score(state(), req, eps) == _reference_prefill_scores(tracker, eps, req)
        assert tracker.recent_prompt_tokens_of(eps, clock.now) == [
            tracker.recent_prompt_tokens(ep, clock.now) + ep.peer_recent_prompt_tokens for ep in eps]


def test_recent_prompt_tokens_of_matches_single_reads_when_the_clock_is_behind() -> None:
    # A charge stamped after `now` (clock read earlier) is not decayed, as in the single read.
    clock = Clock()
    tracker = InflightTracker(clock=clock)
    eps = pool(2)
    tracker.dispatch([eps[0]], 0, 500)
    assert tracker.recent_prompt_tokens_of(eps, clock.now - 1.0) == [500.0, 0.0]
    assert tracker.recent_prompt_tokens(eps[0], clock.now - 1.0) == 500.0


def test_active_request_scores_equal_the_per_endpoint_formula() -> None:
    rng = random.Random(6)
    clock = Clock()
    tracker = InflightTracker(clock=clock)
    eps = _busy_pool(rng, 32, tracker, clock)
    for include_scraped in (False, True):
        scorer = ActiveRequestScorer(params=ActiveRequestScorer.Params(include_scraped=include_scraped))
        if include_scraped:
            counts = [max(ep.inflight + ep.peer_inflight,
                          ep.metrics.running_requests + ep.metrics.waiting_queue_size) for ep in eps]
        else:
            counts = [ep.inflight + ep.peer_inflight for ep in eps]
        busiest = max(counts)
        assert scorer.score(state(), request(), eps) == [(busiest - c) / busiest for c in counts]


def test_prefix_scores_of_the_fast_first_pass_equal_the_per_endpoint_pass() -> None:
    # The first profile of a cycle takes the one-pass path; a second call in the same cycle
    # (P/D's prefill profile) takes the per-endpoint path. Both must give the same scores,
    # matched blocks and cached tokens, with affinity let go for the busy pods.
    rng = random.Random(7)
    eps = pool(16)
    scorer = PrefixCacheScorer(params=PrefixCacheScorer.Params(
        block_size=16, auto_tune=False, balance_abs_threshold=2, balance_rel_threshold=1.5))
    prompts = ["shared system prompt " * 8 + str(i) * rng.randrange(1, 60) for i in range(10)]
    for i, prompt in enumerate(prompts):
        cycle = scorer.cycle_state(CycleState(), request(prompt), eps)
        scorer.record(eps[i % 5], cycle.hashes[: rng.randrange(1, len(cycle.hashes) + 1)])
    for ep in eps:
        ep.inflight = rng.randrange(0, 8)
    for prompt in prompts:
        st = CycleState()
        first = scorer.score(st, request(prompt), eps)
        cycle = scorer.cycle_state(st, request(prompt), eps)
        matched, cached = dict(cycle.matched_blocks), dict(cycle.cached_tokens)
        cycle.matched_blocks.clear()
        cycle.cached_tokens.clear()
        cycle.matched_blocks[eps[0].key] = matched[eps[0].key]  # forces the per-endpoint path
        cycle.cached_tokens[eps[0].key] = cached[eps[0].key]
        second = scorer.score(st, request(prompt), eps)
        assert first == second
        assert cycle.matched_blocks == matched and cycle.cached_tokens == cached
        total = len(cycle.hashes)
        assert matched == {ep.key: scorer.match_length(ep.key, cycle.hashes) for ep in eps}
        assert any(s > 0 for s in first) and all(0.0 <= s <= 1.0 for s in first)
        loads = [max(ep.inflight, ep.metrics.running_requests + ep.metrics.waiting_queue_size) for ep in eps]
        for ep, s, load in zip(eps, first, loads, strict=True):
            expected = matched[ep.key] / total
            if expected > 0 and load - min(loads) > 2 and load > 1.5 * min(loads):
                expected = 0.0
            assert s == expected


class _Fixed:
    """A scorer returning preset scores (to check the profile's weighted sum)."""

    type_name = "fixed"

    def __init__(self, name: str, scores: list[float]) -> None:
        self.name = name
        self.scores = scores

    def score(self, state: CycleState, request: LLMRequest, endpoints: object) -> list[float]:
        return self.scores


def test_profile_totals_equal_the_per_element_weighted_sum() -> None:
    rng = random.Random(8)
    eps = pool(40)
    columns = [[rng.random() for _ in eps] for _ in range(3)]
    weights = [2.0, 1.0, 30.0]
    profile = SchedulerProfile("p", [], [(_Fixed(f"s{i}", c), w) for i, (c, w) in enumerate(
        zip(columns, weights, strict=True))], MaxScorePicker())
    result = profile.run(state(), request(), tuple(eps))
    assert result is not None
    expected = [0.0] * len(eps)
    for column, weight in zip(columns, weights, strict=True):
        expected = [t + s if weight == 1.0 else t + weight * s for t, s in zip(expected, column, strict=True)]
    assert result.scores == {ep.key: t for ep, t in zip(eps, expected, strict=True)}
    assert result.targets == [eps[expected.index(max(expected))]]


def test_profile_without_the_fast_picker_path_passes_scored_endpoints() -> None:
    # A picker without pick_scores gets ScoredEndpoints carrying the same totals.
    seen: list[list[ScoredEndpoint]] = []

    class Recording(RandomPicker):
        def pick(self, state: CycleState, request: LLMRequest, scored: object) -> ProfileRunResult:
            seen.append(list(scored))  # type: ignore[call-overload]
            return super().pick(state, request, seen[-1])

    eps = pool(3)
    profile = SchedulerProfile("p", [], [(_Fixed("s", [0.5, 0.25, 1.0]), 2.0)], Recording())
    result = profile.run(state(), request(), eps)
    assert result is not None and result.scores == {"default/pod-0": 1.0, "default/pod-1": 0.5, "default/pod-2": 2.0}
    assert [(se.endpoint, se.score) for se in seen[0]] == list(zip(eps, [1.0, 0.5, 2.0], strict=True))


def test_max_score_picker_paths_agree_and_spread_ties_uniformly() -> None:
    eps = pool(6)
    values = [0.3, 0.9, 0.1, 0.9, 0.9, 0.2]
    picker = MaxScorePicker(rng=random.Random(3))
    counts = Counter(picker.pick_scores(state(), request(), eps, values).targets[0].name for _ in range(3000))
    assert set(counts) == {"pod-1", "pod-3", "pod-4"}
    assert all(abs(c - 1000) < 120 for c in counts.values())  # 1/3 each; ~5 sigma bound
    assert picker.pick(state(), request(), scored(eps, [0.1, 0.2, 0.7, 0.3, 0.0, 0.4])).targets == [eps[2]]
    # NaN first (only when driven directly; the profile clamps NaN): the first endpoint.
    assert picker.pick_scores(state(), request(), eps, [math.nan, 0.5, 0.1, 0, 0, 0]).targets == [eps[0]]
    top = MaxScorePicker(params=MaxScorePicker.Params(max_num_of_endpoints=3), rng=random.Random(1))
    assert top.pick_scores(state(), request(), eps, [0.1, 0.9, 0.5, 0.7, 0.3, 0.0]).targets == [eps[1], eps[3], eps[2]]
