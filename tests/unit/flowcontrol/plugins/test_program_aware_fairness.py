"""program-aware-fairness (LAS) against llm-d-router ebab687
pkg/epp/framework/plugins/flowcontrol/fairness/program-aware (README.md, plugin.go,
strategy_las.go and the cases of strategy_las_test.go / programmetrics_test.go). Scores and
decayed services are worked out by hand from the README's definitions."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.flowcontrol.config import BandConfig
from epp.flowcontrol.plugins.fcfs_ordering import FCFSOrdering
from epp.flowcontrol.plugins.program_aware_fairness import ProgramAwareFairness, jain_index
from epp.flowcontrol.queue import Band, QueueItem
from epp.headers import FAIRNESS_ID
from epp.scheduling.registry import ConfigError, PluginContext, parse_params, plugin_class
from epp.scheduling.types import LLMRequest

NOW = 10_000.0


def plugin(**raw: object) -> ProgramAwareFairness:
    p = ProgramAwareFairness(params=parse_params(ProgramAwareFairness.Params, raw, "cfg.yaml: plugin 'pa'"))
    p.clock = lambda: NOW
    return p


def req(flow: str = "") -> LLMRequest:
    return LLMRequest(request_id="r", model="m", target_model="m",
                      headers={FAIRNESS_ID: flow} if flow else {})


def band(policy: ProgramAwareFairness, heads: dict[str, float]) -> Band:
    """A band with one queued request per flow, enqueued at the given times."""
    b = Band(0, BandConfig(0, policy, FCFSOrdering()))
    for seq, (flow_id, enqueued_at) in enumerate(heads.items()):
        b.flow(flow_id).push(QueueItem(req(flow_id), flow_id, 0, 10, seq, enqueued_at, 0.0, None))  # type: ignore[arg-type]
        b.size += 1
    return b


def test_defaults_and_registration_follow_upstream() -> None:
    assert plugin_class("program-aware-fairness") is ProgramAwareFairness
    p = ProgramAwareFairness().params
    assert (p.strategy, p.las_weight_service, p.las_weight_head_wait, p.las_half_life_seconds,
            p.eviction_ttl_seconds, p.eviction_sweep_seconds) == ("las", 0.8, 0.2, 60.0, 3600.0, 300.0)


@pytest.mark.parametrize(("raw", "message"), [
    ({"evictionTtlSeconds": -1}, "'evictionTtlSeconds' must be >= 0"),
    ({"evictionSweepSeconds": 0}, "'evictionSweepSeconds' must be > 0"),
    ({"lasWeightService": -0.1}, "'lasWeightService' must be >= 0"),
    ({"lasWeightHeadWait": -1}, "'lasWeightHeadWait' must be >= 0"),
    ({"lasHalfLifeSeconds": -5}, "'lasHalfLifeSeconds' must be >= 0"),
    ({"strategy": "wfq"}, "unknown scoring strategy 'wfq': only 'las' is supported"),
    ({"lasWeight": 1}, "unknown parameter 'lasWeight'"),
])
def test_validation_names_file_plugin_and_parameter(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        plugin(**raw)
    assert str(e.value).startswith("cfg.yaml: plugin 'pa'") and message in str(e.value)


def test_zero_values_are_accepted_as_upstream() -> None:
    # evictionTtlSeconds 0 (never evict), lasHalfLifeSeconds 0 (no decay), zero weights, "" = las.
    plugin(evictionTtlSeconds=0, lasHalfLifeSeconds=0, lasWeightService=0, lasWeightHeadWait=0, strategy="")


def test_prefers_the_program_with_less_attained_service() -> None:
    p = plugin(lasWeightService=1.0, lasWeightHeadWait=0.0)
    p.program("alpha").attained_service = 1000
    p.program("beta").attained_service = 10
    picked = p.pick(band(p, {"alpha": NOW, "beta": NOW}))
    assert picked is not None and picked.flow_id == "beta"


def test_cold_start_falls_back_to_the_longest_head_wait() -> None:
    p = plugin(lasWeightService=1.0, lasWeightHeadWait=1.0)
    picked = p.pick(band(p, {"beta": NOW - 0.05, "alpha": NOW - 0.5}))
    assert picked is not None and picked.flow_id == "alpha"


def test_weighted_score_trades_service_against_head_wait() -> None:
    # Defaults 0.8 / 0.2. alpha: service 0 (norm 0 -> 0.8), head wait 0 ms (norm 0): 0.8.
    # beta: service 100 (norm 1 -> 0), waited longest (norm 1 -> 0.2): 0.2. gamma: service 50
    # (0.8 * 0.5 = 0.4), wait 1000 of 4000 ms (0.2 * 0.25 = 0.05): 0.45. alpha wins.
    p = plugin()
    p.program("beta").attained_service = 100
    p.program("gamma").attained_service = 50
    b = band(p, {"beta": NOW - 4.0, "gamma": NOW - 1.0, "alpha": NOW})
    picked = p.pick(b)
    assert picked is not None and picked.flow_id == "alpha"
    # With service weight 0.1 and wait weight 0.9: alpha 0.1, beta 0.9, gamma 0.05 + 0.225.
    q = plugin(lasWeightService=0.1, lasWeightHeadWait=0.9)
    q.programs = p.programs
    picked = q.pick(b)
    assert picked is not None and picked.flow_id == "beta"


def test_decayed_service_is_read_lazily() -> None:
    # Upstream TestLAS_Pick_UsesDecayedService: alpha accrued 1000 and idled 10 half-lives
    # (-> ~0.98), beta accrued 10 just now: alpha is now the underserved one.
    p = plugin(lasWeightService=1.0, lasWeightHeadWait=0.0, lasHalfLifeSeconds=1.0)
    alpha, beta = p.program("alpha"), p.program("beta")
    alpha.attained_service, alpha.decay_anchor = 1000.0, NOW - 10.0
    beta.attained_service, beta.decay_anchor = 10.0, NOW
    picked = p.pick(band(p, {"alpha": NOW, "beta": NOW}))
    assert picked is not None and picked.flow_id == "alpha"
    assert alpha.attained_service == pytest.approx(1000 / 1024)


def test_half_life_halves_and_zero_disables_decay() -> None:
    p = plugin(lasHalfLifeSeconds=1.0)
    s = p.program("a")
    s.attained_service, s.decay_anchor = 100.0, NOW - 1.0
    assert s.service(NOW, 1.0) == pytest.approx(50.0)
    s.attained_service, s.decay_anchor = 100.0, NOW - 3600.0
    assert s.service(NOW, 0.0) == 100.0


def test_completion_adds_prompt_plus_twice_completion_after_pending_decay() -> None:
    p = plugin(lasHalfLifeSeconds=1.0)
    p.on_dispatched(req("alpha"), "alpha", None)
    p.on_completed(req("alpha"), "alpha", {"prompt_tokens": 100, "completion_tokens": 50})
    assert p.program("alpha").attained_service == 200.0  # 1 * 100 + 2 * 50
    # TestLAS_AddService_AppliesPendingDecayFirst: 200 halves to 100 one half-life later, then +10.
    p.clock = lambda: NOW + 1.0
    p.on_dispatched(req("alpha"), "alpha", None)
    p.on_completed(req("alpha"), "alpha", {"prompt_tokens": 10, "completion_tokens": 0})
    assert p.program("alpha").attained_service == pytest.approx(110.0)
    # No usage seen (response bodies not through the EPP): no cost, still a completion.
    p.on_dispatched(req("alpha"), "alpha", None)
    p.on_completed(req("alpha"), "alpha", None)
    s = p.program("alpha")
    assert s.attained_service == pytest.approx(110.0) and (s.in_flight, s.dispatched) == (0, 3)


def test_wait_is_a_running_mean_of_whole_milliseconds() -> None:
    p = plugin()
    for waited in (0.0104, 0.0309, None):  # 10 ms, 30 ms, and one it did not pick
        p.on_dispatched(req("a"), "a", waited)
    s = p.program("a")
    assert (s.wait_count, s.average_wait_ms, s.in_flight, s.dispatched) == (2, 20.0, 3, 3)


def test_idle_programs_are_forgotten_after_the_ttl_but_not_while_in_flight() -> None:
    p = plugin(evictionTtlSeconds=10, evictionSweepSeconds=5)
    p.pick(band(p, {}))  # first use: the sweep interval starts
    p.on_dispatched(req("busy"), "busy", 0.0)  # in flight: kept however old
    p.program("idle")
    p.clock = lambda: NOW + 9.0  # a sweep, but within the TTL
    p.pick(band(p, {}))
    assert set(p.programs) == {"busy", "idle"}
    p.clock = lambda: NOW + 14.5  # past the TTL and the next sweep
    p.pick(band(p, {}))
    assert set(p.programs) == {"busy"}
    never = plugin(evictionTtlSeconds=0, evictionSweepSeconds=1)
    never.pick(band(never, {}))
    never.program("idle")
    never.clock = lambda: NOW + 1e6
    never.pick(band(never, {}))
    assert set(never.programs) == {"idle"}


def test_jain_index_over_mean_waits() -> None:
    assert jain_index([]) == 1.0 and jain_index([5.0]) == 1.0 and jain_index([0.0, 0.0]) == 1.0
    assert jain_index([10.0, 10.0]) == 1.0
    assert jain_index([10.0, 30.0]) == pytest.approx(1600 / (2 * 1000))  # (40^2) / (2 * (100 + 900))


def test_metrics_use_upstream_names() -> None:
    registry = CollectorRegistry()
    ctx = PluginContext(Datastore(), services={"metrics.registry": registry})
    p = ProgramAwareFairness(ctx=ctx)
    p.on_dispatched(req("a"), "a", 0.010)
    p.on_dispatched(req("b"), "b", 0.030)
    p.on_completed(req("a"), "a", {"prompt_tokens": 3, "completion_tokens": 2})
    get = registry.get_sample_value
    assert get("llm_d_epp_program_aware_avg_wait_time_milliseconds", {"program_id": "b"}) == 30.0
    assert get("llm_d_epp_program_aware_attained_service_tokens", {"program_id": "a"}) == 7.0
    assert get("llm_d_epp_program_aware_jains_fairness_index") == pytest.approx(1600 / 2000)
    ProgramAwareFairness(ctx=ctx)  # a reload builds another instance: registered once, it is exported
    assert get("llm_d_epp_program_aware_attained_service_tokens", {"program_id": "a"}) is None
