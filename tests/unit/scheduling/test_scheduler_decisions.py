"""Scheduler end to end on fake endpoints, wired by the real config loader."""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest

from epp.config.loader import load_scheduler_config
from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.queue_scorer import QueueScorer
from epp.scheduling.plugins.single_profile_handler import SingleProfileHandler
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import (
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingError,
    SchedulingResult,
)
from tests.unit.scheduling.sched_fakes import context, endpoint, pool, request

LONG_PROMPT = "You are a careful assistant that answers in JSON. " * 30


def _default_scheduler() -> Scheduler:
    return load_scheduler_config(None, context()).scheduler


def _decide(scheduler: Scheduler, req: LLMRequest, eps: Sequence[Endpoint]) -> Endpoint:
    result, state = scheduler.schedule(req, eps)
    scheduler.pre_request(state, req, result)
    assert result.primary is not None
    return result.primary.targets[0]


def test_loaded_pod_is_avoided() -> None:
    scheduler = _default_scheduler()
    eps = [endpoint(f"pod-{i}", port=8000 + i, queue=1, kv=0.3) for i in range(3)]
    eps.append(endpoint("busy", port=8100, queue=12, kv=0.95))
    picks = {
        _decide(scheduler, request(f"question number {i} " * 10, request_id=str(i)), eps).name
        for i in range(40)
    }
    assert "busy" not in picks


def test_same_prefix_sticks_to_one_pod() -> None:
    scheduler = _default_scheduler()
    eps = pool(4, queue=2, kv=0.5)
    first = _decide(scheduler, request(LONG_PROMPT + "first question"), eps)
    for i in range(10):
        again = _decide(scheduler, request(LONG_PROMPT + f"follow-up {i}", request_id=str(i)), eps)
        assert again is first


def test_heavy_load_outweighs_prefix_affinity() -> None:
    scheduler = _default_scheduler()
    eps = pool(3, queue=1, kv=0.2)
    sticky = _decide(scheduler, request(LONG_PROMPT), eps)
    sticky.metrics.waiting_queue_size = 30
    sticky.metrics.kv_cache_usage = 1.0
    # prefix 3 x 1.0 < queue 2 x 1.0 + kv-cache 2 x 0.8 on the idle pods
    assert _decide(scheduler, request(LONG_PROMPT, request_id="2"), eps) is not sticky


def test_subset_hint_is_honoured_before_any_plugin() -> None:
    scheduler = _default_scheduler()
    eps = pool(4)
    eps[3].metrics.waiting_queue_size = 50  # the worst pod is the only candidate
    req = request(candidates=frozenset({eps[3].hostport}))
    result, _ = scheduler.schedule(req, eps)
    assert result.primary is not None
    assert result.primary.targets == [eps[3]]
    assert set(result.primary.scores) == {eps[3].key}


def test_subset_outside_the_pool_is_a_503() -> None:
    with pytest.raises(SchedulingError, match="subset hint") as info:
        _default_scheduler().schedule(request(candidates=frozenset({"10.0.0.1:9"})), pool(2))
    assert info.value.status == 503


def test_no_endpoints_is_a_503() -> None:
    with pytest.raises(SchedulingError, match="no ready endpoints") as info:
        _default_scheduler().schedule(request(), [])
    assert info.value.status == 503 and info.value.code == "service_unavailable"


# --- a P/D-shaped handler, to show the framework runs profiles conditionally ---------------
class RoleFilter:
    type_name: ClassVar[str] = "test-role-filter"

    def __init__(self, role: str) -> None:
        self.name = f"{role}-filter"
        self.role = role

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role.value == self.role]


class DecodeThenPrefill:
    type_name: ClassVar[str] = "test-pd-handler"
    name = "pd"

    def pick_profiles(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfile]:
        if "decode" not in results:
            return {"decode": profiles["decode"]}
        long_prompt = len(request.prompt_text()) > 100
        if long_prompt and "prefill" not in results:
            return {"prefill": profiles["prefill"]}
        return {}

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileRunResult | None]
    ) -> SchedulingResult:
        result = SchedulingResult(dict(results), "decode")
        prefill = results.get("prefill")
        if prefill is not None:
            result.headers["x-prefiller-host-port"] = prefill.targets[0].hostport
        return result


def _pd_scheduler() -> Scheduler:
    picker = MaxScorePicker()
    return Scheduler(
        [
            SchedulerProfile("decode", [RoleFilter("decode")], [(QueueScorer(), 1.0)], picker),
            SchedulerProfile("prefill", [RoleFilter("prefill")], [(QueueScorer(), 1.0)], picker),
        ],
        DecodeThenPrefill(),
    )


def test_conditional_second_profile_and_headers() -> None:
    role = "llm-d.ai/role"
    eps = [
        endpoint("d", port=1, labels={role: "decode"}),
        endpoint("p", port=2, labels={role: "prefill"}),
    ]
    scheduler = _pd_scheduler()
    short, _ = scheduler.schedule(request("hi"), eps)
    assert list(short.profile_results) == ["decode"] and short.headers == {}
    long, _ = scheduler.schedule(request("x" * 500), eps)
    assert long.primary is not None and long.primary.targets[0].name == "d"
    assert long.headers == {"x-prefiller-host-port": eps[1].hostport}


class AlwaysAgain(SingleProfileHandler):
    def pick_profiles(self, state: Any, request: Any, profiles: Any, results: Any) -> Any:
        return profiles  # never says "done"


def test_handler_that_never_stops_is_bounded() -> None:
    scheduler = Scheduler(
        [SchedulerProfile("default", [], [], MaxScorePicker())], AlwaysAgain()
    )
    result, _ = scheduler.schedule(request(), pool(2))
    assert list(result.profile_results) == ["default"]


# --- lifecycle hooks --------------------------------------------------------------------
class Recorder:
    type_name: ClassVar[str] = "recorder"
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[Any] = []

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        self.seen.append(("pre", request.request_id))
        if self.fail:
            raise RuntimeError("boom")

    def post_response(self, request: LLMRequest, target: Endpoint, response: Mapping[str, Any]) -> None:
        self.seen.append(("post", target.name, response["status"]))
        if self.fail:
            raise RuntimeError("boom")


def test_hooks_run_in_order_and_a_failing_hook_does_not_fail_the_request() -> None:
    failing, healthy = Recorder(fail=True), Recorder()
    scheduler = Scheduler(
        [SchedulerProfile("default", [], [], MaxScorePicker())],
        SingleProfileHandler(),
        pre_request_plugins=[failing, healthy],
        post_response_plugins=[failing, healthy],
    )
    eps = pool(1)
    req = request()
    result, state = scheduler.schedule(req, eps)
    scheduler.pre_request(state, req, result)
    scheduler.post_response(req, eps[0], {"status": 200})
    assert healthy.seen == [("pre", "req-1"), ("post", "pod-0", 200)]
