"""pd-profile-handler decisions, run through the real Scheduler and SchedulerProfiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import ROLE_LABEL, Endpoint
from epp.scheduling.plugins.by_role_decode_filter import DecodeRoleFilter
from epp.scheduling.plugins.by_role_prefill_filter import PrefillRoleFilter
from epp.scheduling.plugins.pd_metrics import register_pd_metrics
from epp.scheduling.plugins.pd_prefill_header_handler import PrefillHeaderHandler
from epp.scheduling.plugins.pd_profile_handler import PREFILLER_HEADER, PDDecision, PDProfileHandler
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.registry import ConfigError, PluginContext, parse_params
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import (
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingError,
    SchedulingResult,
    ScoredEndpoint,
)


class FirstPicker:
    """Highest score wins; ties keep pool order (deterministic for the tests)."""

    type_name: ClassVar[str] = "test-first-picker"
    name = "picker"

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        ordered = sorted(scored, key=lambda s: -s.score)
        return ProfileRunResult(targets=[s.endpoint for s in ordered])


@dataclass
class FakePrefixScorer:
    """Stands in for the prefix-cache scorer: publishes cached tokens per endpoint."""

    cached: dict[str, int]
    type_name: ClassVar[str] = "test-prefix"
    name: str = "prefix-cache-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        state[f"{self.name}.cached-tokens"] = {ep.key: self.cached.get(ep.key, 0) for ep in endpoints}
        return [0.0] * len(endpoints)


def _ep(name: str, role: str | None, port: int) -> Endpoint:
    labels = {} if role is None else {ROLE_LABEL: role}
    return Endpoint(name=name, address="10.0.0.1", port=port, labels=labels)


PREFILL = _ep("prefill-0", "prefill", 8001)
DECODE = _ep("decode-0", "decode", 8002)
POOL = [PREFILL, DECODE]


def _request(prompt_chars: int, rid: str = "r1") -> LLMRequest:
    return LLMRequest(request_id=rid, model="m", target_model="m", prompt="x" * prompt_chars)


def _scheduler(
    raw_params: dict[str, object] | None = None, cached: dict[str, int] | None = None,
    services: dict[str, object] | None = None,
) -> tuple[Scheduler, PDProfileHandler]:
    ctx = PluginContext(datastore=Datastore(), services=services if services is not None else {})
    params = parse_params(PDProfileHandler.Params, raw_params or {}, "test: pd-profile-handler")
    handler = PDProfileHandler(name="pd", params=params, ctx=ctx)
    decode = SchedulerProfile(
        "decode", [DecodeRoleFilter()], [(FakePrefixScorer(cached or {}), 1.0)], FirstPicker()
    )
    prefill = SchedulerProfile("prefill", [PrefillRoleFilter()], [], FirstPicker())
    return Scheduler([decode, prefill], handler), handler


def test_long_uncached_prompt_gets_prefill_header() -> None:
    sched, handler = _scheduler({"nonCachedTokens": 100})
    result, state = sched.schedule(_request(4000), POOL)
    assert result.primary_profile == "decode"
    assert result.primary is not None and result.primary.targets[0] is DECODE
    assert result.headers == {PREFILLER_HEADER: PREFILL.hostport}
    decision = state[handler.decision_key]
    assert decision == PDDecision(prompt_tokens=1000, cached_tokens=0, remote_prefill=True)


def test_short_prompt_is_decoded_locally() -> None:
    sched, handler = _scheduler({"nonCachedTokens": 100})
    result, state = sched.schedule(_request(200), POOL)  # ~50 tokens
    assert result.primary is not None and result.primary.targets[0] is DECODE
    assert PREFILLER_HEADER not in result.headers
    assert "prefill" not in result.profile_results
    assert state[handler.decision_key].skip_reason == "below-threshold"


def test_prompt_cached_on_decode_pod_skips_prefill() -> None:
    # 1000-token prompt, 950 of them already in the decode pod's prefix cache.
    sched, _ = _scheduler({"nonCachedTokens": 100}, cached={DECODE.key: 950})
    result, _ = sched.schedule(_request(4000), POOL)
    assert PREFILLER_HEADER not in result.headers


def test_prompt_cached_on_another_pod_does_not_count() -> None:
    sched, _ = _scheduler({"nonCachedTokens": 100}, cached={PREFILL.key: 1000})
    result, _ = sched.schedule(_request(4000), POOL)
    assert result.headers[PREFILLER_HEADER] == PREFILL.hostport


def test_scorer_token_count_replaces_the_character_estimate() -> None:
    sched, handler = _scheduler({"nonCachedTokens": 100})

    @dataclass
    class CountingScorer(FakePrefixScorer):
        def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
            state["prefix-cache-scorer.prompt-tokens"] = 20
            return super().score(state, request, endpoints)

    sched.profiles["decode"].scorers = ((CountingScorer({}), 1.0),)
    result, state = sched.schedule(_request(4000), POOL)
    assert PREFILLER_HEADER not in result.headers
    assert state[handler.decision_key].prompt_tokens == 20


def test_no_prefill_pods_means_decode_only() -> None:
    sched, handler = _scheduler({"nonCachedTokens": 10})
    result, state = sched.schedule(_request(4000), [DECODE])
    assert result.primary is not None and result.primary.targets[0] is DECODE
    assert result.headers == {}
    assert state[handler.decision_key].skip_reason == "no-prefill-endpoint"


def test_both_pod_is_not_its_own_prefiller() -> None:
    both = _ep("both-0", "both", 8003)
    sched, handler = _scheduler()  # threshold 0: always disaggregate when possible
    result, state = sched.schedule(_request(4000), [both])
    assert result.primary is not None and result.primary.targets[0] is both
    assert result.headers == {}
    assert state[handler.decision_key].skip_reason == "same-endpoint"


def test_aggregated_pool_without_role_labels_still_schedules() -> None:
    plain = [_ep("vllm-0", None, 8004), _ep("vllm-1", None, 8005)]
    sched, _ = _scheduler()
    result, _ = sched.schedule(_request(4000), plain)
    assert result.primary is not None and result.primary.targets[0] in plain
    assert result.headers == {}


def test_no_decode_pod_is_a_scheduling_error() -> None:
    sched, _ = _scheduler()
    with pytest.raises(SchedulingError, match="no decode endpoint"):
        sched.schedule(_request(4000), [PREFILL])


def test_legacy_threshold_is_in_characters() -> None:
    params = parse_params(PDProfileHandler.Params, {"threshold": 400, "hashBlockSize": 64}, "t")
    assert params.threshold_tokens() == 100


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"threshold": 10, "nonCachedTokens": 5}, "not both"),
        ({"nonCachedTokens": -1}, ">= 0"),
        ({"decodeProfile": "x", "prefillProfile": "x"}, "both 'x'"),
        ({"threshhold": 3}, "unknown parameter 'threshhold'"),
    ],
)
def test_config_errors(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(PDProfileHandler.Params, raw, "cfg.yaml: plugin 'pd' (pd-profile-handler)")


def test_metrics_count_decisions_and_skips() -> None:
    services: dict[str, object] = {}
    registry = CollectorRegistry()
    register_pd_metrics(registry, services)
    sched, _ = _scheduler({"nonCachedTokens": 100}, services=services)
    sched.schedule(_request(4000), POOL)
    sched.schedule(_request(4000), POOL)
    sched.schedule(_request(40), POOL)

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("llm_d_inference_scheduler_pd_decision_total",
                 decision_type="prefill-decode", model_name="m") == 2
    assert value("llm_d_inference_scheduler_pd_decision_total",
                 decision_type="decode-only", model_name="m") == 1
    assert value("epp_pd_prefill_skipped_total", reason="below-threshold") == 1
    assert value("epp_pd_profile_requests_total", profile="decode") == 3
    assert value("epp_pd_profile_requests_total", profile="prefill") == 2
    assert value("epp_pd_uncached_prompt_tokens_count") == 3


def test_prefill_header_handler_fills_missing_header_only() -> None:
    plugin = PrefillHeaderHandler(name="h", params=PrefillHeaderHandler.Params())
    result = SchedulingResult(
        profile_results={"decode": ProfileRunResult([DECODE]), "prefill": ProfileRunResult([PREFILL])},
        primary_profile="decode",
    )
    plugin.pre_request(CycleState(), _request(10), result)
    assert result.headers == {PREFILLER_HEADER: PREFILL.hostport}
    result.headers[PREFILLER_HEADER] = "keep:1"
    plugin.pre_request(CycleState(), _request(10), result)
    assert result.headers[PREFILLER_HEADER] == "keep:1"
