"""The flow controller with llm-d-router's program-aware-fairness, soft-reflective-ceiling-policy
and eviction filter / ordering plugins: the controller calls them where upstream's does
(processor.go dispatchCycle: ComputeLimit once per cycle; Pick per band; director PreRequest /
ResponseBody; RequestEvictor's filter at tracking and ordering at eviction)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from epp.flowcontrol.interfaces import EvictionItem
from epp.flowcontrol.plugins.priority_then_time_eviction_order import PriorityThenTimeEvictionOrder
from epp.flowcontrol.plugins.program_aware_fairness import ProgramAwareFairness
from epp.flowcontrol.plugins.sheddable_eviction_filter import SheddableEvictionFilter
from epp.flowcontrol.plugins.soft_reflective_ceiling import SoftReflectiveCeiling
from epp.flowcontrol.queue import QueueItem
from tests.unit.flowcontrol.test_controller import Pool, run, settle


class RecordingSoftCeiling(SoftReflectiveCeiling):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float, list[float]]] = []

    def ceilings_at(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        out = super().ceilings_at(saturation, priorities)
        self.calls.append((saturation, out))
        return out


def test_soft_ceiling_gates_the_lower_band_on_its_duty_cycle() -> None:
    async def scenario() -> None:
        policy = RecordingSoftCeiling()
        pool = Pool(max_concurrency=4, usage_limit=policy)
        for prio in (1, -1):
            pool.ctl._band(prio)
        for i in range(3):  # 0, 1/4, 2/4 in flight: each admission is one cycle
            assert await pool.send(pool.request(f"c{i}", 1)) == "ok"
        assert [s for s, _ in policy.calls] == [0.0, 0.25, 0.5]
        assert policy.tick == 1  # s = 0.5 is the first saturation in the alternating regime
        policy.calls.clear()
        # s = 3/4: the sheddable band's reflective ceiling is 1 - 0.75 = 0.25, reached: period
        # round(0.75 / 0.25) = 3, so it opens when the shared tick is a multiple of 3.
        verdict = pool.ctl.admit(pool.request("shed", -1), 10)
        assert isinstance(verdict, QueueItem) and policy.calls == [(0.75, [1.0, 0.0])]  # tick 2
        await pool.ctl.wait(verdict)  # the next cycle is the 10 ms poll: tick 3, open
        assert policy.calls == [(0.75, [1.0, 0.0]), (0.75, [1.0, 1.0])] and policy.tick == 3
        # At s = 1.0 every band but the top one is closed and the top one blocks on 1.0 itself.
        pool.ep.inflight = 4
        assert isinstance(pool.ctl.admit(pool.request("crit", 1), 10), QueueItem)
        assert policy.calls[-1] == (1.0, [1.0, 0.0]) and policy.tick == 3  # no tick at s >= 1
    run(scenario)


def test_soft_ceiling_lets_the_top_band_through_below_full_saturation() -> None:
    async def scenario() -> None:
        policy = SoftReflectiveCeiling()
        pool = Pool(max_concurrency=4, usage_limit=policy)
        for prio in (1, -1):
            pool.ctl._band(prio)
        pool.ep.inflight = 3  # s = 0.75: the sheddable band is gated, the critical one is not
        shed = asyncio.create_task(pool.send(pool.request("shed", -1)))
        await settle()
        assert await pool.send(pool.request("crit", 1)) == "ok"  # straight through, never queued
        assert pool.order == ["crit"] and not shed.done()
        pool.ep.inflight = 2  # s = 0.5: period 1, open on every cycle
        assert await asyncio.wait_for(shed, 1) == "ok"
    run(scenario)


class OldestFirst:
    """A test ordering (not upstream's): the earliest dispatch first."""

    name = "oldest-first"

    def less(self, a: EvictionItem, b: EvictionItem) -> bool:
        return a.dispatch_time < b.dispatch_time


def _inflight(pool: Pool, victims: list[str], *rids_prios: tuple[str, int]) -> None:
    for rid, prio in rids_prios:
        req = pool.request(rid, prio)
        pool.ep.inflight += 1
        pool.ctl.on_evictable(req, lambda rid=rid: victims.append(rid))
    for i, it in enumerate(pool.ctl._evictable.values()):  # distinct dispatch times, in order
        it.dispatch_time = 100.0 + i


def test_eviction_uses_the_configured_filter_and_ordering() -> None:
    async def scenario() -> None:
        victims: list[str] = []
        # upstream's pair: sheddable only, the newest of the lowest priority first.
        pool = Pool(max_concurrency=3, enable_eviction=True, eviction_delay=0.0,
                    eviction_filter=SheddableEvictionFilter(), eviction_ordering=PriorityThenTimeEvictionOrder())
        _inflight(pool, victims, ("old", -1), ("new", -1), ("std", 0))
        assert pool.ctl.may_evict(pool.request("x", -1)) and not pool.ctl.may_evict(pool.request("y", 0))
        crit = asyncio.create_task(pool.send(pool.request("crit", 1)))
        await settle()
        assert victims == ["new"]
        pool.finish()
        assert await crit == "ok"

        victims.clear()
        other = Pool(max_concurrency=3, enable_eviction=True, eviction_delay=0.0,
                     eviction_ordering=OldestFirst())  # type: ignore[arg-type]
        _inflight(other, victims, ("old", -1), ("new", -1), ("std", 0))
        crit = asyncio.create_task(other.send(other.request("crit", 1)))
        await settle()
        assert victims == ["old"]  # the ordering plugin decides
        other.finish()
        assert await crit == "ok"
    run(scenario)


def test_no_eviction_when_the_orderings_first_victim_is_not_below_the_waiting_priority() -> None:
    # Upstream EvictN: the victim the ordering puts first must be strictly below the waiting
    # request's priority, else nothing is evicted (OldestFirst puts the standard request first).
    async def scenario() -> None:
        victims: list[str] = []
        pool = Pool(max_concurrency=2, enable_eviction=True, eviction_delay=0.0,
                    eviction_victim_max_priority=0, eviction_ordering=OldestFirst())  # type: ignore[arg-type]
        _inflight(pool, victims, ("std", 0), ("shed", -1))
        std = asyncio.create_task(pool.send(pool.request("std2", 0)))
        await asyncio.sleep(0.03)
        assert victims == [] and not std.done()
        pool.finish()
        assert await std == "ok"
    run(scenario)


def test_program_aware_fairness_serves_the_least_served_program_and_keeps_its_books() -> None:
    async def scenario() -> None:
        pa = ProgramAwareFairness()
        pool = Pool(fairness=pa, lifecycle_hooks=[pa])
        heavy = pool.request("h0", flow="heavy")
        assert await pool.send(heavy) == "ok"  # straight through: a wait of 0 ms is recorded
        pool.ep.inflight -= 1
        pool.ctl.on_release(heavy, {"prompt_tokens": 600, "completion_tokens": 200})
        assert pa.program("heavy").attained_service == 1000.0  # 600 + 2 * 200
        busy = pool.request("busy", flow="light")
        await pool.send(busy)
        tasks = [asyncio.create_task(pool.send(pool.request("h1", flow="heavy")))]
        await asyncio.sleep(0.02)  # the heavy program's head has waited longer...
        tasks.append(asyncio.create_task(pool.send(pool.request("l1", flow="light"))))
        await settle()
        pool.ep.inflight -= 1
        pool.ctl.on_release(busy, {"prompt_tokens": 10, "completion_tokens": 0})
        await settle()
        # ...but light has attained 10 against heavy's ~1000: service weight 0.8 vs wait 0.2.
        assert pool.order[-1] == "l1"
        pool.finish()
        await asyncio.gather(*tasks)
        assert pool.order[-2:] == ["l1", "h1"]
        heavy_books, light_books = pa.program("heavy"), pa.program("light")
        assert (heavy_books.dispatched, heavy_books.in_flight, heavy_books.wait_count) == (2, 1, 2)
        assert (light_books.dispatched, light_books.in_flight) == (2, 1)
        assert heavy_books.average_wait_ms >= 10.0  # (0 + >= 20 ms) / 2
    run(scenario)


def test_a_refused_request_is_not_counted_as_completed() -> None:
    async def scenario() -> None:
        pa = ProgramAwareFairness()
        pool = Pool(fairness=pa, lifecycle_hooks=[pa], max_requests=1)
        busy = pool.request("busy", flow="p")
        await pool.send(busy)
        queued = asyncio.create_task(pool.send(pool.request("q", flow="p")))
        await settle()
        refused = pool.request("r", flow="p")
        assert await pool.send(refused) == "429:flow_control_queue_full"
        pool.ctl.on_release(refused, None)  # the server releases every request it saw
        assert pa.program("p").in_flight == 1  # only "busy"
        pool.finish()
        assert await queued == "ok" and pa.program("p").in_flight == 2
    run(scenario)
