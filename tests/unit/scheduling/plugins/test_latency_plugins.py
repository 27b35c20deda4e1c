"""The latency plugins on a heterogeneous pool: scorer, headroom filter, SLO admitter, and the
fallback before training (no network; the predictor learns through the runtime's own
request lifecycle with a controlled clock)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.config.loader import ConfigError, default_config_text, parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.headers import canonicalize
from epp.latency.predictor import N_FEATURES, PENDING, POOLED, QUEUE_CLEAR, RUNNING, Coefficients
from epp.latency.runtime import (
    SERVICE_KEY,
    STATE_KEY,
    CyclePredictions,
    LatencyRuntime,
    expected_output_tokens,
    latency_runtime,
)
from epp.latency.slo import NO_SLO, SLO
from epp.scheduling.interfaces import PrefixMatchProducer
from epp.scheduling.plugins import latency_scorer
from epp.scheduling.plugins.latency_scorer import LatencyScorer
from epp.scheduling.plugins.latency_slo_admitter import LatencySLOAdmitter
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.plugins.slo_headroom_filter import SLOHeadroomTierFilter
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest, SchedulingError
from tests.unit.scheduling.sched_fakes import context, endpoint
from tests.unit.scheduling.sched_fakes import streamed_request as request

SPEED = {"fast": 1.0, "slow": 2.0, "twin": 1.0}  # the slow pod takes twice as long for everything


def true_ttft(pod: str, prompt_tokens: int) -> float:
    return SPEED[pod] * (0.02 + 0.05 * prompt_tokens / 1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trained_runtime(ctx: PluginContext, pods: list[Endpoint], samples: int = 80) -> LatencyRuntime:
    """Run `samples` requests per pod through the runtime's lifecycle (dispatch, first byte,
    completion) with each pod's true latency, then refit."""
    rt = latency_runtime(ctx.services)
    clock = Clock()
    rt.clock = clock
    rt.predictor.clock = clock
    rng = random.Random(4)
    for i in range(samples):
        for ep in pods:
            tokens = rng.randint(50, 12_000)
            req = request("x" * (tokens * 4), request_id=f"t{i}-{ep.name}", max_tokens=16)
            rt.on_dispatch(CycleState(), req, ep)
            clock.now += true_ttft(ep.name, tokens)
            rt.on_first_byte(req, 200)
            clock.now += SPEED[ep.name] * 0.01 * 15
            rt.on_complete(req, {"status": 200, "completion_tokens": 16})
    assert rt.predictor.refit()
    assert rt.predictor.ready
    assert rt.open_records() == 0 and all(v == pytest.approx(0.0, abs=1e-9) for v in rt.pending_prefill.values())
    return rt


@pytest.fixture
def pods() -> list[Endpoint]:
    return [endpoint("fast", port=8000, inflight=1), endpoint("slow", port=8001, inflight=1)]


@pytest.fixture
def ctx() -> Iterator[PluginContext]:
    c = context()
    yield c
    rt = c.services.get(SERVICE_KEY)
    if isinstance(rt, LatencyRuntime):
        rt.predictor.stop()


def slo_request(ttft_ms: float | None, prompt_tokens: int = 8000, priority: int = 0,
                tpot_ms: float | None = None) -> LLMRequest:
    headers = {}
    if ttft_ms is not None:
        headers["x-llm-d-slo-ttft-ms"] = str(ttft_ms)
    if tpot_ms is not None:
        headers["x-llm-d-slo-tpot-ms"] = str(tpot_ms)
    return request("y" * (prompt_tokens * 4), headers=headers, priority=priority)


def test_scorer_prefers_the_faster_pod(ctx: PluginContext, pods: list[Endpoint]) -> None:
    trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx)
    # 8k prompt: fast ~0.42 s, slow ~0.84 s. Loose SLO (both meet): most headroom = fast.
    assert scorer.score(CycleState(), slo_request(2000), pods) == [1.0, 0.0]
    # Tight SLO only the fast pod meets.
    assert scorer.score(CycleState(), slo_request(600), pods) == [1.0, 0.0]
    # No pod meets it: least deficit is still the fast pod.
    assert scorer.score(CycleState(), slo_request(100), pods) == [1.0, 0.0]
    # `least` packs onto the pod closest to the SLO when both meet it.
    least = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(headroom_selection_strategy="least"))
    assert least.score(CycleState(), slo_request(2000), pods) == [0.0, 1.0]
    # Predictions are close to the truth on both pods.
    cycle = latency_runtime(ctx.services).cycle(CycleState(), slo_request(2000), pods)
    assert cycle is not None
    for ep in pods:
        assert cycle.by_key[ep.key][0] == pytest.approx(true_ttft(ep.name, 8000), rel=0.1)


def state_with(slo: SLO, predictions: dict[str, tuple[float, float]]) -> CycleState:
    """A CycleState whose cycle predictions are given (TTFT s, TPOT s per endpoint key)."""
    state = CycleState()
    state[STATE_KEY] = CyclePredictions(slo, 1000, by_key=dict(predictions))
    return state


def test_scorer_blends_ttft_and_tpot_in_comparable_units(ctx: PluginContext) -> None:
    # A long prefill without SLO: TTFTs 6 / 9 / 12 s, TPOTs within 5% of each other (noise).
    # Per-dimension min-max would rate a and b equal (1 + 0.5 vs 0.5 + 1); in seconds (TTFT
    # plus the 255 tokens after the first, request("q") has no max_tokens: 256 expected) the
    # 3 s TTFT gap dominates.
    pods = [endpoint("a", port=8000), endpoint("b", port=8001), endpoint("c", port=8002)]
    preds = {"a": (6.0, 0.040), "b": (9.0, 0.039), "c": (12.0, 0.041)}
    keyed = {ep.key: preds[ep.name] for ep in pods}
    latency_runtime(ctx.services).score_without_slo = True
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5,
                                                                without_slo="latency"))
    cost = {name: 0.5 * t + 0.5 * 255 * p for name, (t, p) in preds.items()}
    low, high = min(cost.values()), max(cost.values())
    expected = [(high - cost[ep.name]) / (high - low) for ep in pods]
    assert scorer.score(state_with(NO_SLO, keyed), request("q"), pods) == pytest.approx(expected)
    assert expected[0] == 1.0 and expected[1] > 0.0 and expected[2] == 0.0

    # With targets, the references are the targets: a 30 s TTFT target makes the 3 s gaps
    # small, a 50 ms TPOT target makes b's 1 ms edge count (all three meet both targets).
    slo = SLO(ttft_s=30.0, tpot_s=0.05)
    cost = {name: 0.5 * t / 30.0 + 0.5 * p / 0.05 for name, (t, p) in preds.items()}
    low, high = min(cost.values()), max(cost.values())
    expected = [(high - cost[ep.name]) / (high - low) for ep in pods]
    assert scorer.score(state_with(slo, keyed), request("q"), pods) == pytest.approx(expected)
    least = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5,
                                                               headroom_selection_strategy="least"))
    assert least.score(state_with(slo, keyed), request("q"), pods) == pytest.approx([1.0 - e for e in expected])

    # A dimension without spread, or unknown, gives nothing: TTFT alone decides.
    flat = {ep.key: (preds[ep.name][0], 0.04) for ep in pods}
    nan = {ep.key: (preds[ep.name][0], float("nan")) for ep in pods}
    for case in (flat, nan):
        assert scorer.score(state_with(NO_SLO, case), request("q"), pods) == pytest.approx([1.0, 0.5, 0.0])
    # A request with a TTFT target only is ranked on TTFT only (b's better TPOT does not count).
    assert scorer.score(state_with(SLO(ttft_s=30.0), keyed), request("q"), pods) == pytest.approx([1.0, 0.5, 0.0])


def test_request_without_slo_is_ranked_on_predicted_ttft_or_its_own_seconds(ctx: PluginContext) -> None:
    """A long prompt with a short answer and no SLO goes to the pod with the lower predicted
    TTFT even though that pod decodes 2x slower: by default (its own predicted seconds: 2 s
    less prefill queue beats 31 tokens x 30 ms more decode), and by TTFT alone. A
    short prompt asking for 512 tokens: TTFT alone still picks the earliest first byte, its
    own seconds the faster decode."""
    pods = [endpoint("busy-fast", port=8000), endpoint("idle-slow", port=8001)]
    latency_runtime(ctx.services).score_without_slo = True
    by_ttft = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5,
                                                                 without_slo="ttft"))
    by_seconds = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5))
    assert by_seconds.params.without_slo == "latency"
    long_prefill = {pods[0].key: (8.0, 0.030), pods[1].key: (6.0, 0.060)}
    short_answer = request("y" * 80_000, max_tokens=32)
    for scorer in (by_ttft, by_seconds):
        assert scorer.score(state_with(NO_SLO, long_prefill), short_answer, pods) == [0.0, 1.0]
    # Relative to the best pod's TPOT (the old blend) the 2x TPOT outweighed the 1.33x TTFT.
    assert 0.5 * 8.0 / 6.0 + 0.5 * 0.030 / 0.030 < 0.5 * 6.0 / 6.0 + 0.5 * 0.060 / 0.030
    chat = {pods[0].key: (0.5, 0.030), pods[1].key: (0.3, 0.060)}
    long_answer = request("hi", max_tokens=512)
    assert by_ttft.score(state_with(NO_SLO, chat), long_answer, pods) == [0.0, 1.0]
    assert by_seconds.score(state_with(NO_SLO, chat), long_answer, pods) == [1.0, 0.0]
    # With targets the request is ranked against them: only busy-fast meets the 50 ms TPOT.
    with_slo = SLO(ttft_s=30.0, tpot_s=0.05)
    for scorer in (by_ttft, by_seconds):
        assert scorer.score(state_with(with_slo, long_prefill), short_answer, pods) == [1.0, 0.0]


def test_scorer_counts_the_prefill_queue_a_long_request_left_on_a_pod(ctx: PluginContext,
                                                                       pods: list[Endpoint]) -> None:
    """Training never queued (requests one after another), yet a 20k-token prefill just sent
    to the fast pod (~1.0 s there) makes the slow pod (~0.84 s for 8k tokens, idle) the
    better place for the next 8k-token request: the fast pod's prediction is its queue wait
    plus its own ~0.42 s."""
    rt = trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx)
    assert scorer.score(CycleState(), slo_request(5000), pods) == [1.0, 0.0]
    rt.on_dispatch(CycleState(), request("z" * 80_000, request_id="long"), pods[0])
    cycle = rt.cycle(CycleState(), slo_request(5000), pods)
    assert cycle is not None
    assert cycle.by_key[pods[0].key][0] == pytest.approx(true_ttft("fast", 20_000) + true_ttft("fast", 8000),
                                                         rel=0.1)
    assert cycle.by_key[pods[1].key][0] == pytest.approx(true_ttft("slow", 8000), rel=0.1)
    assert scorer.score(CycleState(), slo_request(5000), pods) == [0.0, 1.0]


def test_requests_without_slo_are_left_to_the_other_scorers(ctx: PluginContext, pods: list[Endpoint]) -> None:
    rt = trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx)
    assert scorer.score(CycleState(), slo_request(None), pods) == [0.0, 0.0]
    rt.score_without_slo = True  # the producer's scoreRequestsWithoutSLO
    assert scorer.score(CycleState(), slo_request(None), pods) == [1.0, 0.0]


def test_headroom_filter_keeps_pods_meeting_the_slo_else_all(ctx: PluginContext, pods: list[Endpoint]) -> None:
    trained_runtime(ctx, pods)
    flt = SLOHeadroomTierFilter(ctx=ctx, params=SLOHeadroomTierFilter.Params(epsilon_explore_neg=0.0))
    assert [e.name for e in flt.filter(CycleState(), slo_request(600), pods)] == ["fast"]
    assert [e.name for e in flt.filter(CycleState(), slo_request(2000), pods)] == ["fast", "slow"]
    assert [e.name for e in flt.filter(CycleState(), slo_request(100), pods)] == ["fast", "slow"]
    # TPOT counts too: a TPOT target only the fast pod meets (fast ~10 ms, slow ~20 ms).
    assert [e.name for e in flt.filter(CycleState(), slo_request(2000, tpot_ms=15), pods)] == ["fast"]
    explore = SLOHeadroomTierFilter(ctx=ctx, params=SLOHeadroomTierFilter.Params(epsilon_explore_neg=1.0))
    assert [e.name for e in explore.filter(CycleState(), slo_request(600), pods)] == ["slow"]


def test_admitter_sheds_only_sheddable_requests(ctx: PluginContext, pods: list[Endpoint]) -> None:
    rt = trained_runtime(ctx, pods)
    admitter = LatencySLOAdmitter(ctx=ctx, params=LatencySLOAdmitter.Params(retry_after_s=3))
    # Unattainable SLO, sheddable: 429 with Retry-After.
    with pytest.raises(SchedulingError) as info:
        admitter.filter(CycleState(), slo_request(100, priority=-1), pods)
    assert (info.value.status, info.value.code, info.value.retry_after_s) == (429, "slo_unattainable", 3)
    assert rt.metrics.slo_rejected.labels().value == 1
    # Same request, not sheddable (priority 0 and above): admitted.
    for priority in (0, 1):
        assert admitter.filter(CycleState(), slo_request(100, priority=priority), pods) == pods
    # Sheddable but attainable on one pod, or without an SLO: admitted.
    assert admitter.filter(CycleState(), slo_request(600, priority=-1), pods) == pods
    assert admitter.filter(CycleState(), slo_request(None, priority=-1), pods) == pods
    # An idle pod admits (the predictor knows idle pods least; llm-d does the same).
    pods[1].inflight = 0
    assert admitter.filter(CycleState(), slo_request(100, priority=-1), pods) == pods


def test_untrained_plugins_step_aside(ctx: PluginContext, pods: list[Endpoint]) -> None:
    req = slo_request(1, priority=-1)
    assert LatencyScorer(ctx=ctx).score(CycleState(), req, pods) == [0.0, 0.0]
    assert SLOHeadroomTierFilter(ctx=ctx).filter(CycleState(), req, pods) == pods
    assert LatencySLOAdmitter(ctx=ctx).filter(CycleState(), req, pods) == pods


WITH_LATENCY = default_config_text().replace("""- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
""", """- type: single-profile-handler
- type: predicted-latency-producer
  parameters:
    scoreRequestsWithoutSLO: true
- type: latency-slo-admitter
- type: slo-headroom-tier-filter
- type: latency-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: latency-slo-admitter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: latency-scorer
    weight: 10
""")


def test_before_training_decisions_equal_the_fallback_config() -> None:
    assert "latency-scorer" in WITH_LATENCY
    rng = random.Random(11)
    pods_a = [endpoint(f"p{i}", port=8000 + i) for i in range(4)]
    pods_b = [endpoint(f"p{i}", port=8000 + i) for i in range(4)]
    ctx_a, ctx_b = context(), context()
    fallback = parse_scheduler_config(default_config_text(), ctx_a, "default.yaml")
    latency = parse_scheduler_config(WITH_LATENCY, ctx_b, "latency.yaml")
    try:
        for cfg in (fallback, latency):
            cfg.plugins["max-score-picker"].rng = random.Random(3)
        systems = [f"system prompt {g} " * 200 for g in range(3)]
        picks_a, picks_b = [], []
        for i in range(300):
            for a, b in zip(pods_a, pods_b, strict=True):  # same random pod state for both
                a.metrics.waiting_queue_size = b.metrics.waiting_queue_size = rng.randint(0, 5)
                a.metrics.running_requests = b.metrics.running_requests = rng.randint(0, 20)
                a.metrics.kv_cache_usage = b.metrics.kv_cache_usage = rng.random()
                a.inflight = b.inflight = rng.randint(0, 4)
            prompt = rng.choice(systems) + f"question {i} " * rng.randint(1, 50)
            headers = {"x-llm-d-slo-ttft-ms": "200"} if i % 2 else {}
            priority = -1 if i % 3 == 0 else 0
            for cfg, pods, picks in ((fallback, pods_a, picks_a), (latency, pods_b, picks_b)):
                req = request(prompt, request_id=f"r{i}", headers=dict(headers), priority=priority)
                result, state = cfg.scheduler.schedule(req, pods)
                cfg.scheduler.pre_request(state, req, result)
                picks.append(result.primary.targets[0].name if result.primary else None)
        assert picks_a == picks_b
        assert len(set(picks_a)) > 1  # the comparison saw real choices, not one pod
        assert not latency_runtime(ctx_b.services).predictor.ready
    finally:
        latency_runtime(ctx_b.services).predictor.stop()


PREFIX_PROFILE = """plugins:
- type: predicted-latency-producer
  parameters: {%s}
- type: latency-slo-admitter
- type: slo-headroom-tier-filter
  parameters: {epsilonExploreNeg: 0.0}
- type: prefix-cache-scorer
  parameters: {blockSize: 256, maxPrefixBlocksToMatch: 1024, autoTune: false}
%s- type: latency-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: latency-slo-admitter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: prefix-cache-scorer
  - pluginRef: latency-scorer
    weight: 10
  - pluginRef: max-score-picker
"""


def test_the_admitter_and_the_filter_count_the_prefix_cache(ctx: PluginContext, pods: list[Endpoint]) -> None:
    """The admitter and the headroom filter run before any scorer. The runtime asks the prefix
    scorer for the cycle's matches before its first prediction (llm-d's predicted-latency
    producer reads them from the prefix plugin's data, produced before scheduling). The next
    turn of a 20k-token conversation the slow pod holds has ~130 new tokens there (~0.05 s)
    against its whole prompt on the fast pod (~1 s): only the slow pod meets a 600 ms target.
    Judged without the cache, no pod met it: the filter kept both, and the admitter refused
    the turn when it was sheddable."""
    config = parse_scheduler_config(PREFIX_PROFILE % ("", ""), ctx, "latency.yaml")
    rt = trained_runtime(ctx, pods)
    prefix = config.plugins["prefix-cache-scorer"]
    assert rt.prefix_producer is prefix  # the config's only prefix scorer
    history = "y" * (20_000 * 4)
    state = CycleState()
    prefix.record(pods[1], prefix.cycle_state(state, request(history), pods).hashes)
    flt, admitter = config.plugins["slo-headroom-tier-filter"], config.plugins["latency-slo-admitter"]

    def next_turn(priority: int = 0) -> LLMRequest:
        return request(history + " next turn" * 40, headers={"x-llm-d-slo-ttft-ms": "600"}, priority=priority)

    assert [e.name for e in flt.filter(CycleState(), next_turn(), pods)] == ["slow"]
    assert admitter.filter(CycleState(), next_turn(priority=-1), pods) == pods
    result, _ = config.scheduler.schedule(next_turn(), pods)
    assert result.primary is not None and [e.name for e in result.primary.targets] == ["slow"]
    checked = CycleState()
    flt.filter(checked, next_turn(), pods)
    assert 19_000 < checked[prefix.cached_tokens_key][pods[1].key] < 20_100  # counted from the first pass
    # The prefix scorer ran in an earlier profile of the cycle, on the fast pod alone: the slow
    # pod's match is still made before the first prediction.
    turn, earlier = next_turn(), CycleState()
    prefix.score(earlier, turn, [pods[0]])
    assert [e.name for e in flt.filter(earlier, turn, pods)] == ["slow"]

    rt.prefix_producer = None  # as before: the prefix info only once the prefix scorer has run
    assert [e.name for e in flt.filter(CycleState(), next_turn(), pods)] == ["fast", "slow"]
    with pytest.raises(SchedulingError) as info:
        admitter.filter(CycleState(), next_turn(priority=-1), pods)
    assert info.value.status == 429


def test_the_prefix_producer_is_named_or_the_only_prefix_scorer() -> None:
    """prefixMatchInfoProducerName names the prefix scorer the predictions read before the
    filters; unset, the config's only prefix scorer, and none when there are several. A name
    that is no plugin, or no prefix scorer, is a config error that says which."""
    second = """- type: prefix-cache-scorer
  name: other-prefix
"""
    cases = [("", "", "prefix-cache-scorer"), ("", second, None),
             ("prefixMatchInfoProducerName: other-prefix", second, "other-prefix"),
             ("prefixMatchInfoProducerName: prefix-cache-scorer", second, "prefix-cache-scorer")]
    for params, extra, expected in cases:
        ctx = context()
        try:
            config = parse_scheduler_config(PREFIX_PROFILE % (params, extra), ctx, "latency.yaml")
            producer = latency_runtime(ctx.services).prefix_producer
            assert producer is (config.plugins[expected] if expected else None), (params, extra)
        finally:
            latency_runtime(ctx.services).predictor.stop()
    for params, message in (("prefixMatchInfoProducerName: nope", "'nope' names no plugin"),
                            ("prefixMatchInfoProducerName: latency-scorer", "is not a prefix scorer")):
        ctx = context()
        try:
            with pytest.raises(ConfigError) as err:
                parse_scheduler_config(PREFIX_PROFILE % (params, ""), ctx, "latency.yaml")
            assert "predicted-latency-producer" in str(err.value) and message in str(err.value)
        finally:
            latency_runtime(ctx.services).predictor.stop()


def test_the_precise_prefix_scorer_produces_its_matches_too() -> None:
    """precise-prefix-cache-scorer is a prefix producer as well: asked before the filters, it
    puts every candidate's cached tokens in the cycle (0 here: no KV events yet)."""
    ctx = PluginContext(datastore=Datastore(), services={"metrics.registry": CollectorRegistry()})
    scorer = PrecisePrefixCacheScorer(name="precise", params=parse_params(PrecisePrefixCacheScorer.Params, {}, "t"),
                                      ctx=ctx)
    assert isinstance(scorer, PrefixMatchProducer)
    eps = [endpoint("a", port=8000), endpoint("b", port=8001)]
    state = CycleState()
    scorer.produce_prefix_matches(state, request("z" * 4000), eps)
    assert state[scorer.cached_tokens_key] == {ep.key: 0 for ep in eps}


def test_bad_slo_header_is_a_400_through_the_scheduler(tmp_path: Path) -> None:
    ctx = context()
    cfg = parse_scheduler_config(WITH_LATENCY, ctx, "latency.yaml")
    try:
        rt = trained_runtime(ctx, [endpoint("fast", port=8000), endpoint("slow", port=8001)])
        assert rt.predictor.ready
        headers = {"x-slo-ttft-ms": "soon"}  # the deprecated alias, folded in where headers enter
        canonicalize(headers)
        req = request("hi", headers=headers)
        with pytest.raises(SchedulingError) as info:
            cfg.scheduler.schedule(req, [endpoint("fast", port=8000)])
        assert info.value.status == 400
    finally:
        latency_runtime(ctx.services).predictor.stop()


@pytest.mark.parametrize(("params", "message"), [
    ("{sloDefaults: {chat: {ttftMs: -1}}}", "sloDefaults['chat'].ttftMs"),
    ("{sloDefaults: {chat: {latency: 5}}}", "unknown field 'latency'"),
    ("{sloDefaults: {chat: {}}}", "neither ttftMs nor tpotMs"),
    ("{minSamples: 2}", "minSamples"),
])
def test_config_errors_name_the_plugin_and_field(params: str, message: str) -> None:
    text = f"""plugins:
- type: predicted-latency-producer
  parameters: {params}
- type: latency-scorer
"""
    with pytest.raises(ConfigError) as info:
        parse_scheduler_config(text, context(), "latency.yaml")
    assert "latency.yaml" in str(info.value) and "predicted-latency-producer" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(("field", "good", "attr", "value", "bad"), [
    ("withoutSLO", "ttft", "without_slo", "ttft", "fastest"),
    ("runningTpotWeight", "0.5", "running_tpot_weight", 0.5, "-1"),
    ("queueHarmWeight", "0.5", "queue_harm_weight", 0.5, "-1"),
    ("withoutSLOMaxTtftRatio", "1.5", "without_slo_max_ttft_ratio", 1.5, "0.5"),
    ("lastChunkHarmWeight", "1.0", "last_chunk_harm_weight", 1.0, "-1"),
    ("maxNumBatchedTokens", "2048", "max_num_batched_tokens", 2048, "0"),
    ("maxExtraTtftSeconds", "1.0", "max_extra_ttft_seconds", 1.0, "-1"),
])
def test_scorer_parameter_is_configured_by_name(field: str, good: str, attr: str, value: object,
                                                bad: str) -> None:
    text = """plugins:
- type: predicted-latency-producer
- type: latency-scorer
  parameters: {%s: %s}
"""
    config = parse_scheduler_config(text % (field, good), context(), "latency.yaml")
    scorer = next(p for p in config.plugins.values() if isinstance(p, LatencyScorer))
    assert getattr(scorer.params, attr) == value
    # The pods' step budget reaches the runtime's virtual queue too (LatencyRuntime._carried_over).
    assert scorer.runtime.chunk_tokens == (value if field == "maxNumBatchedTokens" else 8192)
    with pytest.raises(ConfigError) as info:
        parse_scheduler_config(text % (field, bad), context(), "latency.yaml")
    assert "latency.yaml" in str(info.value) and field in str(info.value)


def running_chats(rt: LatencyRuntime, pod: Endpoint, n: int, tpot_ms: float | None,
                  ttft_ms: float | None = None) -> list[LLMRequest]:
    """`n` short chats decoding on `pod` (dispatched, first byte seen, 32 tokens asked for)."""
    chats = []
    for i in range(n):
        headers = {}
        if tpot_ms is not None:
            headers["x-llm-d-slo-tpot-ms"] = str(tpot_ms)
        if ttft_ms is not None:
            headers["x-llm-d-slo-ttft-ms"] = str(ttft_ms)
        chat = request("hi there", request_id=f"chat{i}-{pod.name}", headers=headers, max_tokens=32)
        rt.on_dispatch(CycleState(), chat, pod)
        rt.on_first_byte(chat, 200)
        chats.append(chat)
    return chats


def test_scorer_spares_running_requests_tpot_from_a_long_prefill(ctx: PluginContext, pods: list[Endpoint]) -> None:
    """A 20k-token prefill stalls a pod's decodes ~1 s (fast pod). Two chats decoding there
    with a 30 ms TPOT target and 31 decode steps (predicted ~10 ms each) would average
    ~10 + 1000/31 = 42 ms: both broken. The long prefill then goes to the other pod, both
    when the pods are otherwise similar and when that pod is 2x slower; a short prompt (a
    ~20 ms stall) still goes to the fast pod."""
    rt = trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=1.0))
    long_prefill = slo_request(5000, prompt_tokens=20_000)
    similar = {pods[0].key: (1.00, 0.01), pods[1].key: (1.05, 0.01)}

    def similar_state() -> CycleState:
        state = state_with(SLO(ttft_s=5.0), similar)
        cycle = state[STATE_KEY]
        assert isinstance(cycle, CyclePredictions)
        cycle.features = {ep.key: rt.features(ep, 20_000, 0) for ep in pods}
        return state

    assert scorer.score(similar_state(), long_prefill, pods) == [1.0, 0.0]
    assert scorer.score(CycleState(), long_prefill, pods) == [1.0, 0.0]
    chats = running_chats(rt, pods[0], 2, tpot_ms=30)
    assert rt.running_tpot_harm(pods[0].key, 1.0) == 2 and rt.running_tpot_harm(pods[0].key, 0.1) == 0
    assert scorer.score(similar_state(), long_prefill, pods) == [0.0, 1.0]
    assert scorer.score(CycleState(), long_prefill, pods) == [0.0, 1.0]
    # Without targets too (scored by the producer's scoreRequestsWithoutSLO), in seconds.
    rt.score_without_slo = True
    assert scorer.score(CycleState(), slo_request(None, prompt_tokens=20_000), pods) == [0.0, 1.0]
    assert scorer.score(CycleState(), slo_request(5000, prompt_tokens=200), pods) == [1.0, 0.0]
    # Off with runningTpotWeight 0 (the default): the fast pod again.
    off = LatencyScorer(ctx=ctx)
    assert off.params.running_tpot_weight == 0.0
    assert off.score(CycleState(), long_prefill, pods) == [1.0, 0.0]
    # The chats end: nothing left to spare.
    for chat in chats:
        rt.on_complete(chat, {"status": 200, "completion_tokens": 32})
    assert rt.open_records() == 0 and not rt.tpot_slo_inflight[pods[0].key]
    assert scorer.score(CycleState(), long_prefill, pods) == [1.0, 0.0]



def test_a_request_without_slo_waits_at_most_the_ttft_ratio_to_spare_others(ctx: PluginContext,
                                                                            pods: list[Endpoint]) -> None:
    """Two TPOT-SLO chats decode on the fast pod. A 20k-token prompt without SLO would stall
    them ~1 s there, so the stall cost sends it to the slow pod, where its TTFT is ~2x the
    fast pod's. withoutSLOMaxTtftRatio 1.5 rules the slow pod out for it (score 0): its own
    wait is bounded, the chats pay. A ratio of 2.5 allows the slow pod again; a request
    with targets is not bound by it (its SLO tier is its bound)."""
    rt = trained_runtime(ctx, pods)
    rt.score_without_slo = True
    running_chats(rt, pods[0], 2, tpot_ms=30)
    no_slo = slo_request(None, prompt_tokens=20_000)
    cycle = rt.cycle(CycleState(), no_slo, pods)
    assert cycle is not None
    fast_ttft, slow_ttft = (cycle.by_key[ep.key][0] for ep in pods)
    assert 1.5 * fast_ttft < slow_ttft < 2.5 * fast_ttft

    def scorer(ratio: float) -> LatencyScorer:
        return LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=1.0,
                                                                  without_slo_max_ttft_ratio=ratio))

    assert scorer(0.0).score(CycleState(), no_slo, pods) == [0.0, 1.0]  # off (the default)
    assert LatencyScorer.Params().without_slo_max_ttft_ratio == 0.0
    assert scorer(1.5).score(CycleState(), no_slo, pods) == [1.0, 0.0]
    assert scorer(2.5).score(CycleState(), no_slo, pods) == [0.0, 1.0]
    # Targets both pods meet: the ratio does not apply, the stall cost still decides.
    assert scorer(1.5).score(CycleState(), slo_request(60_000, prompt_tokens=20_000), pods) == [0.0, 1.0]


def test_any_request_waits_at_most_the_extra_ttft_seconds_to_spare_others(ctx: PluginContext,
                                                                         pods: list[Endpoint]) -> None:
    """The same two chats on the fast pod, and a 20k-token prompt whose lenient TTFT target both
    pods meet: the stall cost sends it to the slow pod, seconds later. maxExtraTtftSeconds
    below that difference rules the slow pod out (score 0), with or without targets; above
    it, the stall cost decides again. With the ratio too, the tighter bound holds."""
    rt = trained_runtime(ctx, pods)
    rt.score_without_slo = True
    running_chats(rt, pods[0], 2, tpot_ms=30)
    lenient = slo_request(60_000, prompt_tokens=20_000)
    cycle = rt.cycle(CycleState(), lenient, pods)
    assert cycle is not None
    fast_ttft, slow_ttft = (cycle.by_key[ep.key][0] for ep in pods)
    extra = slow_ttft - fast_ttft
    assert extra > 1.0

    def scorer(seconds: float, ratio: float = 0.0) -> LatencyScorer:
        return LatencyScorer(ctx=ctx, params=LatencyScorer.Params(
            running_tpot_weight=1.0, max_extra_ttft_seconds=seconds, without_slo_max_ttft_ratio=ratio))

    assert LatencyScorer.Params().max_extra_ttft_seconds == 0.0
    assert scorer(0.0).score(CycleState(), lenient, pods) == [0.0, 1.0]  # off (the default)
    assert scorer(0.5 * extra).score(CycleState(), lenient, pods) == [1.0, 0.0]
    assert scorer(1.5 * extra).score(CycleState(), lenient, pods) == [0.0, 1.0]
    no_slo = slo_request(None, prompt_tokens=20_000)
    assert scorer(0.5 * extra).score(CycleState(), no_slo, pods) == [1.0, 0.0]
    assert scorer(1.5 * extra).score(CycleState(), no_slo, pods) == [0.0, 1.0]
    assert scorer(1.5 * extra, ratio=1.5).score(CycleState(), no_slo, pods) == [1.0, 0.0]


def test_last_chunk_free_tokens_follow_the_pods_prefill_stream(ctx: PluginContext, pods: list[Endpoint]) -> None:
    """A pod's prefill stream is cut into steps of max_num_batched_tokens: the last pending
    request's last step has the rest of the budget free; it restarts when none is pending."""
    rt = latency_runtime(ctx.services)
    fast = pods[0]
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 0  # nothing pending
    first = request("x" * (10_000 * 4), request_id="first")
    rt.on_dispatch(CycleState(), first, fast)
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 8192 - (10_000 - 8192)
    chat = request("x" * (3_000 * 4), request_id="chat")
    rt.on_dispatch(CycleState(), chat, fast)
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 2 * 8192 - 13_000
    rt.on_first_byte(first, 200)  # the stream goes on: the chat still ends where it did
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 2 * 8192 - 13_000
    assert rt.last_chunk_free_tokens(fast.key, 2048) == 7 * 2048 - 13_000
    rt.on_first_byte(chat, 200)
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 0
    rt.on_dispatch(CycleState(), request("x" * (5_000 * 4), request_id="next"), fast)
    assert rt.last_chunk_free_tokens(fast.key, 8192) == 8192 - 5_000  # a new stream
    assert rt.last_chunk_free_tokens(pods[1].key, 8192) == 0


def test_scorer_spares_the_last_prefill_step_of_the_request_queued_last(ctx: PluginContext) -> None:
    """Two equal pods, each prefilling one 12k-token prompt. On `fast` it began a stream, so its
    last step has 4,384 tokens free: a 20k-token prompt sent there would take them, and that
    step would last ~0.22 s longer. On `twin` a 4k prompt went first (its first token is out),
    so the 12k prompt's last step has 384 tokens free. The queues are the same, and so are the
    predictions; lastChunkHarmWeight sends the new prompt to `twin`."""
    pods = [endpoint("fast", port=8000, inflight=1), endpoint("twin", port=8001, inflight=1)]
    rt = trained_runtime(ctx, pods)
    rt.score_without_slo = True
    rt.on_dispatch(CycleState(), request("x" * (12_000 * 4), request_id="a"), pods[0])
    head = request("x" * (4_000 * 4), request_id="b0")
    rt.on_dispatch(CycleState(), head, pods[1])
    rt.on_dispatch(CycleState(), request("x" * (12_000 * 4), request_id="b1"), pods[1])
    rt.on_first_byte(head, 200)
    assert [rt.last_chunk_free_tokens(ep.key, 8192) for ep in pods] == [4384, 384]
    long_prompt = slo_request(None, prompt_tokens=20_000)

    def scorer(weight: float) -> LatencyScorer:
        return LatencyScorer(ctx=ctx, params=LatencyScorer.Params(last_chunk_harm_weight=weight))

    cycle = rt.cycle(CycleState(), long_prompt, pods)
    assert cycle is not None
    fast_ttft, twin_ttft = (cycle.by_key[ep.key][0] for ep in pods)
    assert abs(fast_ttft - twin_ttft) < 0.001  # the same queue and speed
    assert LatencyScorer.Params().last_chunk_harm_weight == 0.0
    # Off (the default): the fits (seeded) put `fast` a hair ahead, and the min-max scores
    # follow that hair.
    assert fast_ttft < twin_ttft
    assert scorer(0.0).score(CycleState(), long_prompt, pods) == [1.0, 0.0]
    assert scorer(1.0).score(CycleState(), long_prompt, pods) == [0.0, 1.0]
    # A prompt of 300 tokens fits in either free part: the same delay on both pods, and the
    # same ranking as without the cost.
    short = slo_request(None, prompt_tokens=300)
    assert scorer(1.0).score(CycleState(), short, pods) == scorer(0.0).score(CycleState(), short, pods)


def test_running_tpot_harm_counts_what_its_formula_counts(ctx: PluginContext, pods: list[Endpoint]) -> None:
    """running_tpot_harm reads one stall budget per running request, set at its dispatch. It
    counts the requests its docstring's formula counts: predicted TPOT (0 when unknown) +
    stalled / steps <= target < that + stall / steps, steps = its max_tokens - 1 (at least 1),
    for requests with TPOT targets, predictions and max_tokens of every kind, each stalled by
    the prefills dispatched after it."""
    untrained = LatencyRuntime()  # its predictions are unknown (NaN): the formula reads 0
    rt = trained_runtime(ctx, pods)
    rng = random.Random(11)
    for i in range(80):
        headers = {"x-llm-d-slo-tpot-ms": str(rng.choice((5, 20, 40, 80, 200)))}
        if i % 3 == 0:
            headers["x-llm-d-slo-ttft-ms"] = "3000"
        if i % 7 == 0:
            headers = {"x-llm-d-slo-ttft-ms": "3000"}  # no TPOT target: never counted
        req = request("z" * rng.randint(40, 40_000), request_id=f"run{i}", headers=headers,
                      max_tokens=rng.choice((None, 0, 1, 2, 16, 300)))
        (rt if i < 40 else untrained).on_dispatch(CycleState(), req, pods[i % 2])
    assert any(r.predicted_tpot > 0.0 for r in rt.tpot_slo_inflight[pods[0].key].values())
    assert all(r.predicted_tpot != r.predicted_tpot for r in untrained.tpot_slo_inflight[pods[0].key].values())

    def reference(rt: LatencyRuntime, pod: str, stall: float) -> int:
        harmed = 0
        for r in rt.tpot_slo_inflight.get(pod, {}).values():
            if r.slo.tpot_s is None:
                continue
            steps = max(1, expected_output_tokens(r.request) - 1)
            predicted = r.predicted_tpot if r.predicted_tpot == r.predicted_tpot else 0.0
            before = predicted + r.stalled / steps
            harmed += before <= r.slo.tpot_s < before + stall / steps
        return harmed

    for runtime in (rt, untrained):
        counts = set()
        for ep in pods:
            # Each request's own threshold (the stall that pushes it past its target), just
            # either side of it, and a coarse grid.
            thresholds = [(r.slo.tpot_s - (r.predicted_tpot if r.predicted_tpot == r.predicted_tpot else 0.0))
                          * max(1, expected_output_tokens(r.request) - 1) - r.stalled
                          for r in runtime.tpot_slo_inflight[ep.key].values() if r.slo.tpot_s is not None]
            stalls = [t * f for t in thresholds if t > 0.0 for f in (0.999999, 1.000001)]
            for stall in [*stalls, 0.0, 0.005, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0]:
                counts.add(reference(runtime, ep.key, stall))
                assert runtime.running_tpot_harm(ep.key, stall) == reference(runtime, ep.key, stall), (ep.key, stall)
        assert len(counts) >= 4  # the grid sees several different counts
    untrained.predictor.stop()


def test_meeting_is_meets_of_each_candidate() -> None:
    """CyclePredictions.meeting, the filter's and the scorer's one pass, answers what meets
    answers per key: for every kind of SLO, and TTFT / TPOT predictions that are NaN, infinite,
    on the target or either side of it."""
    by_key = {f"{i}-{j}": (ttft, tpot) for i, ttft in enumerate((0.5, 1.0, 1.5, math.nan, math.inf))
              for j, tpot in enumerate((0.05, 0.1, 0.2, math.nan, math.inf))}
    for slo in (NO_SLO, SLO(ttft_s=1.0), SLO(tpot_s=0.1), SLO(ttft_s=1.0, tpot_s=0.1)):
        cycle = CyclePredictions(slo, 100, by_key=dict(by_key))
        keys = list(by_key)
        assert cycle.meeting(keys) == [cycle.meets(key) for key in keys]
        assert 0 < sum(cycle.meeting(keys)) <= len(keys)


def test_relative_costs_sum_the_dimensions_the_request_is_ranked_on() -> None:
    """_relative_costs, as its docstring says: per dimension with a weight (and a target when
    the request has any), weight x prediction / target (or x 1 and x the decode steps in
    seconds without targets), skipping a dimension with a NaN prediction or all predictions
    equal, and TPOT without targets for a request with no decode step. Random cases with NaN,
    equal, infinite and ordinary values."""
    rng = random.Random(3)
    pool = (0.0, 0.05, 0.2, 1.0, 1.0, 7.5, math.nan, math.inf)

    def reference(preds: list[tuple[float, float]], slos: tuple[float | None, float | None],
                  weights: tuple[float, float], output_tokens: int | None) -> list[float]:
        costs = [0.0] * len(preds)
        has_slo = slos[0] is not None or slos[1] is not None
        for dim in (0, 1):
            values = [p[dim] for p in preds]
            if weights[dim] <= 0.0 or (has_slo and slos[dim] is None):
                continue
            if any(v != v for v in values) or len(set(values)) == 1:
                continue
            slo = slos[dim]
            steps = max(0, output_tokens - 1) if output_tokens is not None else 0
            per_unit = 1.0 / max(slo, 0.001) if slo is not None else float(steps if dim else 1)
            if per_unit <= 0.0:
                continue  # no decode steps: the TPOT costs the request nothing
            costs = [c + weights[dim] * per_unit * v for c, v in zip(costs, values, strict=True)]
        return costs

    kinds: set[tuple[str, ...]] = set()
    for _ in range(3000):
        n = rng.choice((1, 2, 3, 8))
        preds = [(rng.choice(pool), rng.choice(pool)) for _ in range(n)]
        slos = (rng.choice((None, 0.0, 0.5, 2.0)), rng.choice((None, 0.03, 0.1)))
        weights = (rng.choice((0.0, 0.5, 1.0)), rng.choice((0.0, 0.5)))
        if weights == (0.0, 0.0):
            continue
        output_tokens = rng.choice((None, 0, 1, 64))
        got = latency_scorer._relative_costs(preds, slos[0], slos[1], weights[0], weights[1], output_tokens)
        want = reference(preds, slos, weights, output_tokens)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == w or (g != g and w != w), (preds, slos, weights, output_tokens, got, want)
        kinds.add(tuple(sorted({"nan" if c != c else "inf" if math.isinf(c) else "0" if c == 0 else "x"
                                for c in got})))
    assert len(kinds) >= 5  # zero, finite, infinite and NaN costs, mixed


def test_running_requests_already_past_their_tpot_target_are_not_spared(ctx: PluginContext,
                                                                         pods: list[Endpoint]) -> None:
    """A prefill dispatched to a pod stalls the TPOT-SLO requests decoding there; once those
    stalls have pushed a request past its target, a further stall cannot make it miss again:
    it no longer counts, and the next long prefill may go to that pod. A chat that came after
    the stalling prefill is still spared."""
    rt = trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=1.0))
    long_prefill = slo_request(5000, prompt_tokens=20_000)
    running_chats(rt, pods[0], 2, tpot_ms=30)
    assert rt.running_tpot_harm(pods[0].key, 1.0) == 2
    assert scorer.score(CycleState(), long_prefill, pods) == [0.0, 1.0]
    # A first long prefill lands there anyway (another EPP's choice, or no better pod): each
    # chat has now been dealt its service time, ~1 s over 31 steps, past the 30 ms target.
    first = slo_request(5000, prompt_tokens=20_000)
    rt.on_dispatch(CycleState(), first, pods[0])
    stalled = [r.stalled for r in rt.tpot_slo_inflight[pods[0].key].values()]
    assert len(stalled) == 2 and min(stalled) > 0.5  # (the first chat also by the second's prefill)
    assert rt.running_tpot_harm(pods[0].key, 1.0) == 0
    assert scorer.score(CycleState(), long_prefill, pods) == [1.0, 0.0]
    # A chat dispatched after that prefill has been dealt nothing yet: spared again.
    late = running_chats(rt, pods[0], 1, tpot_ms=30)
    assert rt.running_tpot_harm(pods[0].key, 1.0) == 1
    assert rt.tpot_slo_inflight[pods[0].key][id(late[0])].stalled == 0.0

def test_queue_harm_keeps_a_long_prefill_off_the_slow_pod(ctx: PluginContext, pods: list[Endpoint]) -> None:
    """The slow pod (2x) is predicted to answer a 20k-token prompt slightly earlier (its
    queue is empty), but the pool was sent ~2 requests/s lately (~1/s per pod): the prompt's
    ~2 s of prefill there would hold up ~2 arrivals for ~1 s each, against ~0.5 s in all on
    the fast pod. With queueHarmWeight 0.5 that sends the prompt to the fast pod; a short
    prompt (a ~60 ms hold-up) still goes to the slow pod, and once the traffic has faded
    the long prompt goes there again."""
    rt = trained_runtime(ctx, pods)
    clock = rt.clock
    assert isinstance(clock, Clock)
    clock.now += 1000.0  # the training's dispatches have faded
    on = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(queue_harm_weight=0.5))
    off = LatencyScorer(ctx=ctx)
    assert off.params.queue_harm_weight == 0.0
    slow_first = {pods[0].key: (1.05, 0.01), pods[1].key: (1.00, 0.01)}

    def state(slo: SLO, prompt_tokens: int) -> CycleState:
        s = state_with(slo, slow_first)
        cycle = s[STATE_KEY]
        assert isinstance(cycle, CyclePredictions)
        cycle.features = {ep.key: rt.features(ep, prompt_tokens, 0) for ep in pods}
        return s

    long_prefill = slo_request(5000, prompt_tokens=20_000)
    assert on.score(state(SLO(ttft_s=5.0), 20_000), long_prefill, pods) == [0.0, 1.0]  # nothing sent lately
    for i in range(20):  # 20 chats over 2 s, each answered at once
        chat = request("hi there", request_id=f"c{i}", max_tokens=8)
        rt.on_dispatch(CycleState(), chat, pods[i % 2])
        rt.on_first_byte(chat, 200)
        rt.on_complete(chat, {"status": 200, "completion_tokens": 8})
        clock.now += 0.1
    assert rt.dispatch_rate() == pytest.approx(1.8, rel=0.1)
    assert on.score(state(SLO(ttft_s=5.0), 20_000), long_prefill, pods) == [1.0, 0.0]
    assert off.score(state(SLO(ttft_s=5.0), 20_000), long_prefill, pods) == [0.0, 1.0]
    # Without targets (the producer's scoreRequestsWithoutSLO), in seconds: the same.
    rt.score_without_slo = True
    assert on.score(state(NO_SLO, 20_000), slo_request(None, prompt_tokens=20_000), pods) == [1.0, 0.0]
    # A short prompt holds the pod up for ~60 ms: its own 5% earlier answer wins.
    assert on.score(state(SLO(ttft_s=5.0), 200), slo_request(5000, prompt_tokens=200), pods) == [0.0, 1.0]
    clock.now += 100.0  # ten time constants without traffic
    assert on.score(state(SLO(ttft_s=5.0), 20_000), long_prefill, pods) == [0.0, 1.0]


def test_queue_harm_is_equal_on_equal_speed_pods(ctx: PluginContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pods of the same speed get the same harm, whichever served the recent traffic: the
    cost reads the pool's rate, so a pod that took the chats does not repel long prompts
    onto the other (the first version, on each pod's own rate, did)."""
    monkeypatch.setitem(SPEED, "twin", 1.0)
    twins = [endpoint("fast", port=8000), endpoint("twin", port=8001)]
    rt = trained_runtime(ctx, twins)
    clock = rt.clock
    assert isinstance(clock, Clock)
    clock.now += 1000.0
    for i in range(40):  # all recent traffic to the first pod
        chat = request("hi there", request_id=f"c{i}", max_tokens=8)
        rt.on_dispatch(CycleState(), chat, twins[0])
        rt.on_first_byte(chat, 200)
        rt.on_complete(chat, {"status": 200, "completion_tokens": 8})
        clock.now += 0.1
    on = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(queue_harm_weight=0.5))
    preds = {twins[0].key: (1.00, 0.01), twins[1].key: (1.05, 0.01)}
    state = state_with(SLO(ttft_s=5.0), preds)
    cycle = state[STATE_KEY]
    assert isinstance(cycle, CyclePredictions)
    cycle.features = {ep.key: rt.features(ep, 20_000, 0) for ep in twins}
    assert on.score(state, slo_request(5000, prompt_tokens=20_000), twins) == [1.0, 0.0]


def test_running_requests_without_tpot_slo_change_nothing(ctx: PluginContext, pods: list[Endpoint]) -> None:
    rt = trained_runtime(ctx, pods)
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=1.0))
    long_prefill = slo_request(5000, prompt_tokens=20_000)
    running_chats(rt, pods[0], 3, tpot_ms=None, ttft_ms=100)  # TTFT targets only
    running_chats(rt, pods[1], 3, tpot_ms=None)  # no targets at all
    assert rt.tpot_slo_inflight == {}
    with_chats = scorer.score(CycleState(), long_prefill, pods)
    off = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=0.0))
    assert with_chats == off.score(CycleState(), long_prefill, pods) == [1.0, 0.0]


def test_untrained_scorer_ignores_running_tpot_slos(ctx: PluginContext, pods: list[Endpoint]) -> None:
    rt = latency_runtime(ctx.services)
    running_chats(rt, pods[0], 2, tpot_ms=1)
    assert len(rt.tpot_slo_inflight[pods[0].key]) == 2
    on = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=1.0))
    assert on.score(CycleState(), slo_request(5000, prompt_tokens=20_000), pods) == [0.0, 0.0]


def test_an_outlier_does_not_squeeze_the_others_scores(ctx: PluginContext) -> None:
    """Costs 5, 6 and 9 s on three pods and 60 s on a fourth: plain min-max put the first
    three at 1.0, 0.98 and 0.93, where the weaker scorers (weights 1-3 against 10) decided
    between pods seconds apart. Scores are normalised over at most the best cost: a pod
    twice as costly as the best, or worse, scores 0."""
    pods = [endpoint(name, port=8000 + i) for i, name in enumerate("abcd")]
    preds = {"a": (5.0, 0.0), "b": (6.0, 0.0), "c": (9.0, 0.0), "d": (60.0, 0.0)}
    latency_runtime(ctx.services).score_without_slo = True
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(without_slo="ttft"))
    keyed = {ep.key: preds[ep.name] for ep in pods}
    assert scorer.score(state_with(NO_SLO, keyed), request("q"), pods) == pytest.approx([1.0, 0.8, 0.2, 0.0])
    # Within 2x of the best, plain min-max as before: the spread is the full range.
    close = {ep.key: preds[ep.name] for ep in pods[:3]}
    assert scorer.score(state_with(NO_SLO, close), request("q"), pods[:3]) == pytest.approx([1.0, 0.75, 0.0])
    # `least` (closest to the SLO) keeps plain min-max.
    least = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(headroom_selection_strategy="least"))
    assert least.score(state_with(SLO(ttft_s=100.0), keyed), request("q"), pods) == pytest.approx(
        [0.0, 1 / 55, 4 / 55, 1.0])


def test_queue_harm_treats_speeds_within_the_prediction_error_as_equal(
        ctx: PluginContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal pods' learned speeds differ by 10-20% (the busier one looks slower). Squared in
    the harm, that noise outweighed a real queue difference: the prompt went to the pod that
    would answer later. Service times within 25% of the fastest candidate's now pay the same
    harm (none), and the 2x slow pod still pays."""
    monkeypatch.setitem(SPEED, "fast-ish", 1.2)
    trio = [endpoint("fast", port=8000), endpoint("fast-ish", port=8001), endpoint("slow", port=8002)]
    rt = trained_runtime(ctx, trio)
    clock = rt.clock
    assert isinstance(clock, Clock)
    for i in range(40):  # recent traffic: a few requests per second to the pool
        chat = request("hi there", request_id=f"c{i}", max_tokens=8)
        rt.on_dispatch(CycleState(), chat, trio[i % 3])
        rt.on_first_byte(chat, 200)
        rt.on_complete(chat, {"status": 200, "completion_tokens": 8})
        clock.now += 0.25
    assert rt.dispatch_rate() > 2.0
    services = [rt.predictor.service_time(ep.key, 20.0) for ep in trio]
    assert services[1] / services[0] == pytest.approx(1.2, rel=0.05)
    assert services[2] / services[0] == pytest.approx(2.0, rel=0.05)
    # fast has a little queue ahead: fast-ish answers 0.12 s sooner.
    preds = {trio[0].key: (1.32, 0.0), trio[1].key: (1.2, 0.0), trio[2].key: (2.0, 0.0)}
    state = state_with(SLO(ttft_s=10.0), preds)
    cycle = state[STATE_KEY]
    assert isinstance(cycle, CyclePredictions)
    cycle.features = {ep.key: rt.features(ep, 20_000, 0) for ep in trio}
    on = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(queue_harm_weight=0.5))
    long_prefill = slo_request(10_000, prompt_tokens=20_000)
    scores = on.score(state, long_prefill, trio)
    assert scores[1] == 1.0 and scores[0] > scores[2] == 0.0
    # Without the tolerance the speed noise decides: the pod that answers later wins.
    monkeypatch.setattr(latency_scorer, "_HARM_SPEED_TOLERANCE", 0.0)
    noisy = on.score(state, long_prefill, trio)
    assert noisy[0] == 1.0 and noisy[1] < 1.0


def test_a_request_without_slo_pays_no_tpot_for_the_queue_ahead_of_it(ctx: PluginContext) -> None:
    """Its decode starts after its first token, when the prefills queued ahead of it there
    are done: the TPOT in its cost is predicted for that state (no prefill pending, the
    waiting requests running). Here the current-state TPOT grows with the pending prefill
    (chunks stall decodes): pod a answers 2.5 s sooner but, on its current TPOT, cost a
    32-token answer 7.26 against b's 3.86."""
    pods = [endpoint("a", port=8000), endpoint("b", port=8001)]
    rt = latency_runtime(ctx.services)
    rt.score_without_slo = True
    predictor = rt.predictor

    def predict(pod: str, x: Sequence[float]) -> tuple[float, float]:
        return 1.0 + x[QUEUE_CLEAR], 0.02 + 0.1 * x[PENDING] + 0.01 * x[RUNNING]

    # Published as the pooled model (the queue wait is the TTFT's offset): the predictor then
    # predicts exactly predict() on every pod, with no method replaced (the compiled module's
    # class has read-only methods: epp/latency/native.py).
    ttft, tpot = [0.0] * N_FEATURES, [0.0] * N_FEATURES
    ttft[0] = 1.0  # the bias feature
    tpot[0], tpot[PENDING], tpot[RUNNING] = 0.02, 0.1, 0.01
    predictor.models = {POOLED: Coefficients(tuple(ttft), tuple(tpot), 100, 100)}
    assert predictor.predict(pods[0].key, [1.0, 20.0, 4.0, 0.5, 2.0, 0.0, 2.0, 0.0, 0.0]) == pytest.approx((1.5, 0.42))
    features = {pods[0].key: [1.0, 20.0, 4.0, 0.5, 2.0, 0.0, 2.0, 0.0, 0.0],
                pods[1].key: [1.0, 20.0, 1.0, 3.0, 0.0, 0.0, 1.0, 0.0, 0.0]}
    state = state_with(NO_SLO, {key: predict(key, x) for key, x in features.items()})
    cycle = state[STATE_KEY]
    assert isinstance(cycle, CyclePredictions)
    cycle.features = features
    # At its decode start: nothing pending, the 2 waiting requests running.
    assert predictor.decode_tpot(pods[0].key, features[pods[0].key]) == pytest.approx(0.04)
    assert features[pods[0].key][PENDING] == 4.0  # the cycle's features are left alone
    scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5))
    answer = request("y" * 80_000, max_tokens=32)
    # Current-state costs: a 0.5 x 1.5 + 0.5 x 31 x 0.42 = 7.26, b 0.5 x 4 + 0.5 x 31 x 0.12 = 3.86.
    # At decode start: a 0.75 + 15.5 x 0.04 = 1.37, b 2.0 + 15.5 x 0.02 = 2.31.
    assert scorer.score(state, answer, pods) == [1.0, 0.0]
    # With targets, the TPOT target is judged on the current state, as before.
    assert scorer.score(state_with(SLO(tpot_s=0.5), {k: predict(k, x) for k, x in features.items()}),
                        answer, pods) == [0.0, 1.0]


@pytest.mark.parametrize("workers", [1, 3])
def test_the_producer_shares_its_requests_with_the_other_workers(
        ctx: PluginContext, tmp_path: Path, workers: int) -> None:
    from epp.latency.runtime import latency_runtime
    from epp.latency.sharing import DISPATCH, LatencySharing
    from epp.scheduling.plugins.predicted_latency_producer import PredictedLatencyProducer
    from epp.server.peers import SERVICE_KEY as PEER_BUS_KEY
    from epp.server.peers import PeerBus

    bus = ctx.services[PEER_BUS_KEY] = PeerBus(tmp_path, 0, workers)
    PredictedLatencyProducer(ctx=ctx)
    runtime = latency_runtime(ctx.services)
    if workers == 1:
        assert runtime.peers is None and DISPATCH not in bus._handlers
        return
    sharing = runtime.peers
    assert isinstance(sharing, LatencySharing) and sharing.bus is bus
    assert bus._handlers[DISPATCH] == sharing._on_dispatch
    PredictedLatencyProducer(ctx=ctx)  # a config reload keeps the runtime and its sharing
    assert runtime.peers is sharing
