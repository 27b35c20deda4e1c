"""vLLM's --scheduling-policy in the simulator (vllm/v1/core/sched/request_queue.py and
scheduler.py): `priority` orders the waiting queue by (priority, arrival), the lower value
first, and KV-pressure preemption takes the running request with the largest (priority,
arrival); `fcfs` (the default) answers 400 to a non-zero request `priority`, as vLLM does."""

import asyncio
import time

import httpx
import pytest

from epp.sim.cluster import simulated_pods
from epp.sim.config import SimPodConfig, apply_overrides
from epp.sim.engine import SimRequest

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def _finish_order(policy: str) -> list[str]:
    """One slot held by a long request; five short ones queue behind it in the pod; the order
    they finish in."""
    async with (
        simulated_pods(1, time_scale=0.1, max_num_seqs=1, scheduling_policy=policy) as cluster,
        httpx.AsyncClient(timeout=30) as client,
    ):
        pod = cluster[0]
        url = pod.url + "/v1/completions"
        order: list[str] = []

        async def send(name: str, priority: int, max_tokens: int = 2) -> None:
            body = {"model": MODEL, "prompt": name, "max_tokens": max_tokens}
            if policy == "priority":
                body["priority"] = priority
            r = await client.post(url, json=body)
            assert r.status_code == 200, r.text
            order.append(name)

        busy = asyncio.create_task(send("busy", 0, max_tokens=200))
        await _wait_for(lambda: pod.engine.state()["running"] == 1)
        tasks = []
        # Sent one by one, so arrival order is the list order.
        for i, (name, prio) in enumerate((("p5", 5), ("p0-a", 0), ("p-3", -3), ("p0-b", 0), ("p-1", -1))):
            tasks.append(asyncio.create_task(send(name, prio)))
            await _wait_for(lambda n=i + 1: pod.engine.state()["waiting"] == n)  # type: ignore[misc]
        await asyncio.gather(busy, *tasks)
        return order


async def test_priority_policy_orders_the_waiting_queue_by_priority_then_arrival() -> None:
    assert await _finish_order("priority") == ["busy", "p-3", "p-1", "p0-a", "p0-b", "p5"]


async def test_fcfs_policy_keeps_arrival_order() -> None:
    assert await _finish_order("fcfs") == ["busy", "p5", "p0-a", "p-3", "p0-b", "p-1"]


async def test_fcfs_rejects_a_nonzero_priority_like_vllm() -> None:
    async with simulated_pods(1, time_scale=0.05) as cluster, httpx.AsyncClient(timeout=30) as client:
        url = cluster.urls[0] + "/v1/completions"
        ok = await client.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": 0})
        assert ok.status_code == 200, ok.text
        r = await client.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": 2})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "Got priority 2 but Priority scheduling is not enabled."
        for bad in ("high", True, 1.5):
            r = await client.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": bad})
            assert r.status_code == 400, (bad, r.text)
            assert "priority must be an integer" in r.json()["error"]["message"]


async def _preempted(policy: str) -> tuple[int, int]:
    """Two running requests that together outgrow the KV cache; how often each was preempted:
    (low priority sent first, high priority sent second)."""
    async with simulated_pods(1, time_scale=0.05, num_gpu_blocks=16, block_size=16, max_num_seqs=2,
                              scheduling_policy=policy) as cluster:
        engine = cluster[0].engine
        prio = policy == "priority"
        low = engine.make_request("low", list(range(100, 150)), 150, priority=5 if prio else 0)
        engine.submit(low)
        await _wait_for(lambda: low.num_computed_tokens > 0)
        high = engine.make_request("high", list(range(200, 250)), 150, priority=-1 if prio else 0)
        engine.submit(high)
        reqs: list[SimRequest] = [low, high]
        await _wait_for(lambda: all(r.finished for r in reqs))
        assert [r.finish_reason for r in reqs] == ["length", "length"]
        return low.preemptions, high.preemptions


async def test_kv_preemption_victim_is_the_lowest_priority_under_priority_policy() -> None:
    low, high = await _preempted("priority")
    assert low > 0 and high == 0
    # Control: FCFS preempts the most recently admitted request instead.
    low, high = await _preempted("fcfs")
    assert low == 0 and high > 0


def test_unknown_scheduling_policy_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="scheduling_policy must be one of"):
        apply_overrides(SimPodConfig(), {"scheduling_policy": "sjf"}, "test")
