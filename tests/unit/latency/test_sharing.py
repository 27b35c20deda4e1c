"""The latency runtime's requests shared between workers (epp/latency/sharing.py).

The reference is one worker: requests split over two workers that share them must leave each
worker's ledger, virtual prefill queue, TPOT guard, dispatch rate and training samples as one
worker serving them all would have them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from epp.datastore.endpoint import Endpoint
from epp.latency.runtime import LatencyRuntime
from epp.latency.sharing import DISPATCH, FIRST_BYTE, LatencySharing
from epp.scheduling.types import CycleState, LLMRequest
from epp.server.peers import PeerBus
from tests.unit.latency.test_runtime import Clock, train
from tests.unit.scheduling.sched_fakes import endpoint, request


class LoopbackBus:
    """The PeerBus's publish/subscribe, delivered at once to the other buses of the same
    `wire`, through msgpack as on the socket."""

    def __init__(self, wire: list[LoopbackBus], worker_id: int) -> None:
        self.wire, self.worker_id = wire, worker_id
        self.handlers: dict[str, Callable[[int, Any], None]] = {}
        wire.append(self)

    def subscribe(self, topic: str, handler: Callable[[int, Any], None]) -> None:
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: Any) -> None:
        data = msgpack.packb((topic, self.worker_id, payload), use_bin_type=True)
        for peer in self.wire:
            if peer is not self:
                topic_, worker, decoded = msgpack.unpackb(data, raw=False)
                peer.handlers[topic_](worker, decoded)


def runtime(clock: Clock) -> LatencyRuntime:
    rt = LatencyRuntime()
    rt.clock = rt.predictor.clock = clock
    rt.chunk_tokens = 8192  # what the scorer sets: a head's last step carries the next prompt's start
    train(rt)
    return rt


def ledger(rt: LatencyRuntime, pod: Endpoint) -> tuple[float, ...]:
    key = pod.key
    return (round(rt.queue_wait(key), 9), round(rt.pending_prefill.get(key, 0.0), 9),
            round(rt.inflight_decode.get(key, 0.0), 9), rt.pending_count.get(key, 0),
            round(rt.queued_service.get(key, 0.0), 9), rt.untimed_pending.get(key, 0),
            rt.joins_last_step(key, rt.clock()), rt.running_tpot_harm(key, 0.3), rt.running_tpot_harm(key, 3.0),
            round(rt.dispatch_rate(), 9))


@pytest.mark.parametrize("defer", [False, True], ids=["", "deferral"])
@pytest.mark.parametrize("seed", range(6))
def test_two_workers_sharing_see_the_queue_one_worker_sees(seed: int, defer: bool) -> None:
    """With deferral on too (deferBehindPrefillTokens): a worker holds a request as the single
    worker would, and the others queue it as held."""
    rng = random.Random(seed)
    clock = Clock()
    alone = runtime(clock)
    wire: list[LoopbackBus] = []
    workers = [runtime(clock) for _ in range(2)]
    if defer:
        for rt in (alone, *workers):
            rt.defer_min_ktokens, rt.max_defer_s = 8.192, 10.0
    deferred = 0
    for i, rt in enumerate(workers):
        LatencySharing.attach(LoopbackBus(wire, i), rt)
    pods = [endpoint("p", port=8000), endpoint("q", port=8001)]
    # request id -> (its request in the single worker, in its own worker, which worker, pod)
    live: dict[str, tuple[LLMRequest, LLMRequest, int, Endpoint]] = {}
    first_bytes = 0
    for step in range(300):
        clock.now += rng.choice((0.0, 0.01, 0.05, 0.3, 1.0))
        action = rng.random()
        if action < 0.4 or not live:
            name = f"r{step}"
            size = rng.choice((400, 4_000, 40_000, 100_000))
            headers = {"x-slo-tpot-ms": str(rng.choice((20, 60)))} if rng.random() < 0.5 else {}
            kwargs: dict[str, Any] = {"stream": rng.random() < 0.85, "max_tokens": rng.choice((16, 128)),
                                      "headers": headers, "request_id": name}
            pod, worker = rng.choice(pods), rng.randrange(2)
            one, own = request("x" * size, **kwargs), request("x" * size, **kwargs)
            held = alone.on_dispatch(CycleState(), one, pod) is not None
            assert (workers[worker].on_dispatch(CycleState(), own, pod) is not None) == held
            deferred += held
            live[name] = (one, own, worker, pod)
        else:
            name = rng.choice(sorted(live))
            one, own, worker, pod = live[name]
            rt = workers[worker]
            if rt._records[id(own)].first_byte == 0.0:
                first_bytes += 1
                alone.on_first_byte(one, 200)
                rt.on_first_byte(own, 200)
            else:
                response = {"status": 200, "completion_tokens": rng.choice((1, 12, 100))}
                alone.on_complete(one, response)
                rt.on_complete(own, response)
                del live[name]
        for pod in pods:
            expected = ledger(alone, pod)
            assert ledger(workers[0], pod) == expected, (step, pod.key)
            assert ledger(workers[1], pod) == expected, (step, pod.key)
    assert first_bytes > 50
    assert (deferred > 5) == defer, deferred
    assert sum(len(alone.predictor.step_samples(pod.key)) for pod in pods) > 0
    # Each worker learnt from every request: the same samples as the single worker.
    for rt in workers:
        assert rt.predictor.sample_counts() == alone.predictor.sample_counts()
        for pod in pods:
            assert rt.predictor.step_samples(pod.key) == alone.predictor.step_samples(pod.key)
    for rt in (alone, *workers):
        rt.predictor.stop()


def test_a_restarted_worker_s_old_requests_are_dropped() -> None:
    clock = Clock()
    wire: list[LoopbackBus] = []
    receiver, sender = runtime(clock), runtime(clock)
    LatencySharing.attach(LoopbackBus(wire, 0), receiver)
    LatencySharing.attach(LoopbackBus(wire, 1), sender)
    pod = endpoint("p")
    sender.on_dispatch(CycleState(), request("x" * 40_000, stream=True), pod)
    assert receiver.peer_records() == 1 and receiver.pending_prefill[pod.key] == pytest.approx(10.0)
    # Worker 1 restarts: a new process, a new runtime and generation, and its first request.
    wire.pop()
    restarted = runtime(clock)
    LatencySharing.attach(LoopbackBus(wire, 1), restarted)
    restarted.on_dispatch(CycleState(), request("x" * 4_000, stream=True), pod)
    assert receiver.peer_records() == 1
    assert receiver.pending_prefill[pod.key] == pytest.approx(1.0)
    for rt in (receiver, sender, restarted):
        rt.predictor.stop()


def test_messages_not_understood_are_counted_and_change_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rt = runtime(clock)
    wire: list[LoopbackBus] = []
    sharing = LatencySharing.attach(LoopbackBus(wire, 0), rt)
    peer = LoopbackBus(wire, 1)
    with caplog.at_level("WARNING", logger="epp.latency.sharing"):
        peer.publish(DISPATCH, [1, 2, 3])
        peer.publish(DISPATCH, (7, 1, "default/p", "m", "m", True, None, None, ["a"], 1.0, 0.1, 500.0, 1.0))
        peer.publish(FIRST_BYTE, "nonsense")
        peer.publish(FIRST_BYTE, (7, 99, 501.0, 200))  # a request never heard of
    assert sharing.rejected == 3
    assert rt.peer_records() == 0 and rt.pending_prefill == {}
    assert "not understood" in caplog.text
    rt.predictor.stop()


async def test_requests_reach_the_other_worker_over_the_peer_bus(tmp_path: Path) -> None:
    buses = [PeerBus(tmp_path, i, 2) for i in range(2)]
    workers = [LatencyRuntime(), LatencyRuntime()]
    for bus, rt in zip(buses, workers, strict=True):
        train(rt)
        LatencySharing.attach(bus, rt)
        await bus.start()
    pod = endpoint("p")
    long_prompt = request("x" * 80_000, stream=True, max_tokens=64)
    workers[0].on_dispatch(CycleState(), long_prompt, pod)
    await asyncio.sleep(0.05)
    other = workers[1]
    assert other.peer_records() == 1
    assert other.pending_prefill[pod.key] == pytest.approx(20.0)
    assert other.inflight_decode[pod.key] == pytest.approx(0.064)
    # The other worker sees the pod busy for the long prompt's service time.
    assert other.queue_wait(pod.key) == pytest.approx(workers[0].queue_wait(pod.key), abs=0.06)
    assert other.queue_wait(pod.key) > 1.0
    before = other.predictor.sample_counts()
    workers[0].on_first_byte(long_prompt, 200)
    await asyncio.sleep(0.05)
    assert other.pending_prefill[pod.key] == 0.0 and other.queue_wait(pod.key) == 0.0
    workers[0].on_complete(long_prompt, {"status": 200, "completion_tokens": 64})
    await asyncio.sleep(0.05)
    assert other.peer_records() == 0 and other.inflight_decode[pod.key] == 0.0
    assert other.predictor.sample_counts() == {"ttft": before["ttft"] + 1, "tpot": before["tpot"] + 1}
    for bus, rt in zip(buses, workers, strict=True):
        await bus.stop()
        rt.predictor.stop()
