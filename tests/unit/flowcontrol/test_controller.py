"""The flow controller with the real concurrency detector over real Endpoint counters: a
"server" coroutine routes each dispatched request (in-flight + 1) and finishes it later
(in-flight - 1, on_release), as epp/server/extproc.py does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore.endpoint import Endpoint
from epp.flowcontrol.config import BandConfig, FlowControlConfig
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.flowcontrol.plugins.concurrency_detector import ConcurrencyDetector
from epp.flowcontrol.plugins.edf_ordering import EDFOrdering
from epp.flowcontrol.plugins.fcfs_ordering import FCFSOrdering
from epp.flowcontrol.plugins.global_strict_fairness import GlobalStrictFairness
from epp.flowcontrol.plugins.priority_holdback import PriorityHoldback
from epp.flowcontrol.plugins.round_robin_fairness import RoundRobinFairness
from epp.flowcontrol.queue import QueueItem
from epp.headers import FAIRNESS_ID, OBJECTIVE
from epp.scheduling.registry import parse_params
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError


class Pool:
    def __init__(self, max_concurrency: int = 1, **limits: object) -> None:
        self.ep = Endpoint("pod", "127.0.0.1", 8000)
        det = ConcurrencyDetector(params=parse_params(ConcurrencyDetector.Params,
                                                      {"maxConcurrency": max_concurrency}, "t"))
        fairness = limits.pop("fairness", GlobalStrictFairness())
        ordering = limits.pop("ordering", FCFSOrdering())
        self.cfg = FlowControlConfig(enabled=True, detector=det, **limits)  # type: ignore[arg-type]
        self.cfg.default_band = BandConfig(0, fairness, ordering)  # type: ignore[arg-type]
        self.registry = CollectorRegistry()
        self.endpoints = [self.ep]  # empty it for the no-endpoint regime
        self.ctl = FlowController(self.cfg, lambda: self.endpoints, FlowControlMetrics(self.registry, "pool"))
        self.order: list[str] = []

    def request(self, rid: str, priority: int = 0, flow: str = "", objective: str = "") -> LLMRequest:
        headers = {}
        if flow:
            headers[FAIRNESS_ID] = flow
        if objective:
            headers[OBJECTIVE] = objective
        return LLMRequest(request_id=rid, model="m", target_model="m", priority=priority, headers=headers)

    async def send(self, req: LLMRequest, nbytes: int = 10) -> str:
        """Admit, wait if queued, then occupy the pod; returns 'ok' or the error code."""
        verdict = self.ctl.admit(req, nbytes)
        if isinstance(verdict, RequestError):
            return f"{verdict.status}:{verdict.code}"
        if isinstance(verdict, QueueItem):
            try:
                await self.ctl.wait(verdict)
            except RequestError as e:
                assert e.retry_after_s is not None  # every refusal tells the client when to retry
                return f"{e.status}:{e.code}"
        self.ep.inflight += 1
        self.order.append(req.request_id)
        return "ok"

    def finish(self) -> None:
        self.ep.inflight -= 1
        self.ctl.on_release()

    def outcomes(self, outcome: str, priority: int = 0) -> float:
        v = self.registry.get_sample_value("inference_extension_flow_control_requests_total",
                                           {"priority": str(priority), "outcome": outcome})
        return v or 0.0


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 5))  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_unsaturated_pool_routes_at_once_without_queueing() -> None:
    async def scenario() -> None:
        pool = Pool(max_concurrency=2)
        assert pool.ctl.admit(pool.request("a"), 10) is None
        assert pool.ctl.size == 0 and pool.outcomes("Dispatched") == 1
    run(scenario)


def test_saturated_pool_queues_and_dispatches_by_priority_as_capacity_frees() -> None:
    async def scenario() -> None:
        pool = Pool()
        assert await pool.send(pool.request("first")) == "ok"  # fills the pod
        tasks = [asyncio.create_task(pool.send(pool.request(rid, prio)))
                 for rid, prio in (("low", -1), ("std", 0), ("crit", 5))]
        await settle()
        assert pool.ctl.size == 3 and pool.order == ["first"]  # all wait: the pod is full
        sat = pool.registry.get_sample_value("inference_extension_flow_control_pool_saturation",
                                             {"inference_pool": "pool"})
        assert sat == 1.0
        for _ in range(3):
            pool.finish()
            await settle()
        assert pool.order == ["first", "crit", "std", "low"]
        assert [t.result() for t in tasks] == ["ok", "ok", "ok"]
    run(scenario)


@pytest.mark.parametrize(("fairness", "expected"), [
    (RoundRobinFairness(), ["a1", "b1", "a2", "b2", "a3", "a4"]),
    (GlobalStrictFairness(), ["a1", "a2", "a3", "a4", "b1", "b2"]),
])
def test_fairness_between_flows(fairness: object, expected: list[str]) -> None:
    async def scenario() -> None:
        pool = Pool(fairness=fairness)
        await pool.send(pool.request("busy"))
        tasks = [asyncio.create_task(pool.send(pool.request(f"a{i}", flow="tenant-a"))) for i in range(1, 5)]
        await settle()
        tasks += [asyncio.create_task(pool.send(pool.request(f"b{i}", flow="tenant-b"))) for i in range(1, 3)]
        await settle()
        for _ in range(6):
            pool.finish()
            await settle()
        assert pool.order[1:] == expected
        await asyncio.gather(*tasks)
    run(scenario)


def test_edf_serves_earliest_deadline_first() -> None:
    async def scenario() -> None:
        pool = Pool(ordering=EDFOrdering(), ttl_by_objective={"urgent": 2.0, "relaxed": 4.0})
        await pool.send(pool.request("busy"))
        tasks = [asyncio.create_task(pool.send(pool.request(rid, objective=obj)))
                 for rid, obj in (("none", ""), ("relaxed", "relaxed"), ("urgent", "urgent"))]
        await settle()
        for _ in range(3):
            pool.finish()
            await settle()
        assert pool.order == ["busy", "urgent", "relaxed", "none"]  # no TTL sorts last
        await asyncio.gather(*tasks)
    run(scenario)


def test_ttl_expiry_answers_429_and_leaves_the_queue() -> None:
    # llm-d-router ebab687 pkg/epp/requestcontrol/admission.go translateFlowControlOutcome:
    # EvictedTTL with endpoints in the pool is ResourceExhausted (429, backpressure).
    async def scenario() -> None:
        pool = Pool(default_request_ttl=0.05)
        await pool.send(pool.request("busy"))
        assert await pool.send(pool.request("late")) == "429:flow_control_ttl_expired"
        assert pool.ctl.size == 0 and pool.outcomes("EvictedTTL") == 1
    run(scenario)


def test_cancelled_waiter_is_removed_at_once() -> None:
    async def scenario() -> None:
        pool = Pool()
        await pool.send(pool.request("busy"))
        task = asyncio.create_task(pool.send(pool.request("gone")))
        await settle()
        assert pool.ctl.size == 1
        task.cancel()  # what grpc does when Envoy closes the stream (client disconnect)
        await settle()
        assert pool.ctl.size == 0 and pool.ctl.nbytes == 0
        assert pool.outcomes("EvictedContextCancelled") == 1
        size = pool.registry.get_sample_value("inference_extension_flow_control_queue_size", {
            "fairness_id": "default-flow", "priority": "0", "inference_pool": "pool",
            "model_name": "m", "target_model_name": "m"})
        assert size == 0
        pool.finish()
        assert await pool.send(pool.request("next")) == "ok"
    run(scenario)


def test_band_limit_rejects_with_429() -> None:
    async def scenario() -> None:
        pool = Pool()
        pool.cfg.default_band = BandConfig(0, GlobalStrictFairness(), FCFSOrdering(), max_requests=1)
        await pool.send(pool.request("busy"))
        waiting = asyncio.create_task(pool.send(pool.request("q1")))
        await settle()
        assert await pool.send(pool.request("q2")) == "429:flow_control_queue_full"
        assert pool.outcomes("RejectedCapacity") == 1
        pool.finish()
        assert await waiting == "ok"
    run(scenario)


def test_global_limit_displaces_lower_priority_newest_first() -> None:
    async def scenario() -> None:
        pool = Pool(max_requests=2)
        await pool.send(pool.request("busy"))
        old = asyncio.create_task(pool.send(pool.request("old-low", -1)))
        await settle()
        new = asyncio.create_task(pool.send(pool.request("new-low", -1)))
        await settle()
        # Full (2 queued): a standard request displaces the newest sheddable one.
        crit = asyncio.create_task(pool.send(pool.request("std", 0)))
        await settle()
        assert await new == "429:flow_control_displaced"
        assert pool.outcomes("Displaced", -1) == 1
        # Another sheddable request cannot displace its own priority: refused.
        assert await pool.send(pool.request("third-low", -1)) == "429:flow_control_queue_full"
        pool.finish()
        await settle()
        pool.finish()
        await settle()
        assert [await crit, await old] == ["ok", "ok"]
        assert pool.order == ["busy", "std", "old-low"]
    run(scenario)


def test_global_byte_limit() -> None:
    async def scenario() -> None:
        pool = Pool(max_bytes=100)
        await pool.send(pool.request("busy"))
        first = asyncio.create_task(pool.send(pool.request("big"), nbytes=80))
        await settle()
        assert await pool.send(pool.request("too-big"), nbytes=30) == "429:flow_control_queue_full"
        pool.finish()
        assert await first == "ok"
    run(scenario)


def test_release_all_lets_queued_requests_go() -> None:
    async def scenario() -> None:
        pool = Pool()
        await pool.send(pool.request("busy"))
        task = asyncio.create_task(pool.send(pool.request("q")))
        await settle()
        pool.ctl.release_all()  # flow control switched off by a config reload
        assert await task == "ok" and pool.ctl.size == 0
    run(scenario)


@pytest.mark.parametrize("enabled", [True, False])
def test_eviction_of_inflight_sheddable_for_critical_past_ttl(enabled: bool) -> None:
    async def scenario() -> None:
        pool = Pool(enable_eviction=enabled, ttl_by_objective={"critical": 0.05})
        shed = pool.request("shed", -1)
        await pool.send(shed)
        aborted: list[str] = []
        pool.ctl.on_evictable(shed, lambda: aborted.append("shed"))
        result = await pool.send(pool.request("crit", 1, objective="critical"))
        if enabled:
            assert result == "ok" and aborted == ["shed"]
            assert pool.outcomes("EvictedInFlight", -1) == 1 and pool.ctl.evicted == 1
        else:
            assert result == "429:flow_control_ttl_expired" and aborted == []
        # An ended request is no longer evictable: the next critical request times out.
        pool.ctl.on_release(shed)
        assert await pool.send(pool.request("late", 1, objective="critical")) == "429:flow_control_ttl_expired"
    run(scenario)


@pytest.mark.parametrize("reason", ["ttl", "client-gone"])
def test_dispatch_racing_with_a_waiter_cancellation_does_not_stall_the_queue(reason: str) -> None:
    # The waiter's task is cancelled (TTL timer or client gone) and, before it runs again,
    # capacity frees and the dispatcher picks that very request. Found by `epp bench flow`:
    # the handed-over capacity went to nobody and every later request timed out.
    async def scenario() -> None:
        pool = Pool(default_request_ttl=0.05 if reason == "ttl" else 0.0)
        await pool.send(pool.request("busy"))
        racing = asyncio.create_task(pool.send(pool.request("racing")))
        await settle()
        def free_and_dispatch() -> None:
            pool.ep.inflight -= 1
            pool.ctl._dispatch()  # runs before the cancelled task resumes

        if reason == "ttl":
            # Both timers fall due in the same loop iteration: the TTL timeout cancels the
            # task, then the dispatch runs before the task's wake-up.
            asyncio.get_running_loop().call_later(0.051, free_and_dispatch)
            time.sleep(0.1)
        else:
            racing.cancel()
            free_and_dispatch()
        if reason == "ttl":
            assert await racing in ("ok", "429:flow_control_ttl_expired")
        else:
            with pytest.raises(asyncio.CancelledError):
                await racing
        # The queue still works.
        pool.ep.inflight = 1
        nxt = asyncio.create_task(pool.send(pool.request("next")))
        await settle()
        pool.finish()
        assert await asyncio.wait_for(nxt, 1) == "ok"
    run(scenario)


def test_priority_holdback_keeps_headroom_for_the_top_band() -> None:
    # 4 slots, ceilings 1.0 / 0.75 / 0.5: standard work stops at 3 in flight, sheddable at 2,
    # so a critical request finds a free slot without waiting for one to end.
    async def scenario() -> None:
        pool = Pool(max_concurrency=4, usage_limit=PriorityHoldback(
            params=parse_params(PriorityHoldback.Params, {"minCeiling": 0.5}, "t")))
        for prio in (1, 0, -1):
            pool.ctl._band(prio)  # the three bands are known (as after the first requests)
        assert [await pool.send(pool.request(f"s{i}", 0)) for i in range(2)] == ["ok", "ok"]
        shed = asyncio.create_task(pool.send(pool.request("shed", -1)))  # 2/4 = 0.5: held back
        await pool.send(pool.request("s2", 0))  # 2/4 < 0.75 but a sheddable one waits: queued...
        await settle()
        assert pool.order == ["s0", "s1", "s2"] and not shed.done()
        std = asyncio.create_task(pool.send(pool.request("s3", 0)))  # 3/4 >= 0.75: waits
        await settle()
        assert not std.done()
        assert await pool.send(pool.request("crit", 1)) == "ok"  # 3/4 < 1.0: straight through
        assert pool.order[-1] == "crit" and pool.ctl.size == 2
        pool.finish()  # 3/4: standard still held back
        await settle()
        assert not std.done()
        pool.finish()  # 2/4: standard goes (back to 3/4); sheddable still held back
        await settle()
        assert await std == "ok" and not shed.done()
        pool.finish()
        pool.finish()  # 1/4: sheddable goes
        await settle()
        assert pool.order[-2:] == ["s3", "shed"] and await shed == "ok"
    run(scenario)


def test_eviction_delay_evicts_an_inflight_lower_request_as_soon_as_the_band_is_blocked() -> None:
    async def scenario() -> None:
        pool = Pool(max_concurrency=2, enable_eviction=True, eviction_delay=0.0, eviction_victim_max_priority=0)
        aborted: list[str] = []
        for rid, prio in (("shed", -1), ("std", 0)):
            req = pool.request(rid, prio)
            await pool.send(req)
            pool.ctl.on_evictable(req, lambda rid=rid, req=req: aborted.append(rid))
        crit = asyncio.create_task(pool.send(pool.request("crit", 1)))
        await settle()
        assert aborted == ["shed"]  # the lowest priority goes first, once per freed slot
        # Until the victim's stream ends no second eviction is issued (stop-and-wait).
        await asyncio.sleep(0.03)
        assert aborted == ["shed"] and not crit.done()
        pool.ep.inflight -= 1
        pool.ctl.on_release(pool.request("x"))  # an unrelated request ended: still paced
        pool.ep.inflight += 1
        await settle()
        assert aborted == ["shed"]
        pool.finish()  # the victim's stream ended: capacity frees, the critical request goes
        await settle()
        assert await crit == "ok" and pool.outcomes("EvictedInFlight", -1) == 1
    run(scenario)


def test_reload_recomputes_the_ceilings_and_configured_bands_count_from_the_start() -> None:
    async def scenario() -> None:
        pool = Pool(max_concurrency=4)
        for prio in (1, 0):
            pool.ctl._band(prio)
        await pool.send(pool.request("a", 0))
        await pool.send(pool.request("b", 0))  # static 1.0: 2/4 is no limit for standard work
        assert pool.ctl.size == 0 and len(pool.order) == 2
        pool.cfg.usage_limit = PriorityHoldback(
            params=parse_params(PriorityHoldback.Params, {"minCeiling": 0.5}, "t"))
        pool.cfg.bands[-1] = pool.cfg.band_config(-1)  # a configured band, never seen yet
        pool.ctl.reconfigure(pool.cfg)  # three bands now: 1.0 / 0.75 / 0.5
        held = asyncio.create_task(pool.send(pool.request("c", -1)))
        await settle()
        assert not held.done() and pool.ctl.queued(-1) == 1  # 2/4 >= 0.5
        pool.finish()
        await settle()
        assert await held == "ok"
    run(scenario)


# --- the no-endpoint regime (noEndpointRequestTTL; llm-d-router ebab687
# pkg/epp/flowcontrol/controller/internal/processor.go isExpired, requestcontrol/admission.go) ---

def test_no_endpoint_budget_expires_with_503_no_endpoints() -> None:
    async def scenario() -> None:
        pool = Pool(default_request_ttl=5.0, no_endpoint_request_ttl=0.05)
        pool.endpoints = []
        t0 = time.monotonic()
        # EvictedNoEndpoints -> ServiceUnavailable (503): nothing can serve the request.
        assert await pool.send(pool.request("r")) == "503:flow_control_no_endpoints"
        assert 0.04 <= time.monotonic() - t0 < 1.0  # the no-endpoint budget, not the 5 s TTL
        assert pool.outcomes("EvictedNoEndpoints") == 1 and pool.ctl.size == 0
    run(scenario)


def test_endpoint_coming_back_within_the_budget_serves_the_waiting_request() -> None:
    async def scenario() -> None:
        pool = Pool(no_endpoint_request_ttl=2.0)
        pool.endpoints = []
        task = asyncio.create_task(pool.send(pool.request("r")))
        await asyncio.sleep(0.05)
        assert not task.done() and pool.ctl.size == 1
        pool.endpoints = [pool.ep]  # the pod is back (the dispatcher polls while blocked)
        assert await asyncio.wait_for(task, 1) == "ok"
        assert pool.outcomes("Dispatched") == 1
    run(scenario)


def test_regime_change_starts_a_fresh_budget() -> None:
    async def scenario() -> None:
        # Both budgets 0.2 s. Enqueued on an empty pool; at 0.15 s a (full) pod appears: the
        # saturation budget is charged from then, so the request expires at ~0.35 s with 429,
        # not at 0.2 s (processor.go: "each regime change therefore starts its budget fresh").
        pool = Pool(default_request_ttl=0.2, no_endpoint_request_ttl=0.2)
        pool.ep.inflight = 1  # the pod, once back, is saturated
        pool.endpoints = []
        t0 = time.monotonic()
        task = asyncio.create_task(pool.send(pool.request("r")))
        await asyncio.sleep(0.15)
        pool.endpoints = [pool.ep]
        assert await task == "429:flow_control_ttl_expired"
        assert 0.33 <= time.monotonic() - t0 < 1.0
    run(scenario)


def test_total_wait_is_bounded_by_the_longer_budget_plus_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    import epp.flowcontrol.controller as controller_module

    monkeypatch.setattr(controller_module, "BACKSTOP_MARGIN_S", 0.0)

    async def scenario() -> None:
        pool = Pool(default_request_ttl=0.2, no_endpoint_request_ttl=0.2)
        pool.ep.inflight = 1
        pool.endpoints = []
        t0 = time.monotonic()
        task = asyncio.create_task(pool.send(pool.request("r")))
        await asyncio.sleep(0.15)
        pool.endpoints = [pool.ep]  # fresh budget until 0.35 s, but the bound is 0.2 s
        assert await task == "429:flow_control_ttl_expired"
        assert 0.18 <= time.monotonic() - t0 < 0.3
    run(scenario)


def test_zero_no_endpoint_budget_waits_until_an_endpoint_appears() -> None:
    async def scenario() -> None:
        pool = Pool(default_request_ttl=0.05, no_endpoint_request_ttl=0.0)
        pool.endpoints = []
        task = asyncio.create_task(pool.send(pool.request("r")))
        await asyncio.sleep(0.2)  # well past the 50 ms saturation TTL: that budget is not in force
        assert not task.done()
        pool.endpoints = [pool.ep]
        assert await asyncio.wait_for(task, 1) == "ok"
    run(scenario)


def test_full_queue_with_no_endpoint_is_503() -> None:
    async def scenario() -> None:
        pool = Pool(max_requests=1, no_endpoint_request_ttl=2.0)
        pool.endpoints = []
        first = asyncio.create_task(pool.send(pool.request("a")))
        await settle()
        # RejectedNoEndpoints -> 503: a capacity rejection with no endpoint is unavailability.
        assert await pool.send(pool.request("b")) == "503:flow_control_no_endpoints"
        assert pool.outcomes("RejectedNoEndpoints") == 1
        pool.endpoints = [pool.ep]
        assert await asyncio.wait_for(first, 1) == "ok"
    run(scenario)
