"""The latency runtime's virtual prefill queue per pod (no network; a controlled clock)."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable

import httpx
import pytest

from epp.bench.latency_placement import idle_ttft_s
from epp.latency.predictor import N_FEATURES, QUEUE_CLEAR
from epp.latency.runtime import LatencyRuntime
from epp.scheduling.types import CycleState, LLMRequest
from epp.sim.cluster import simulated_pods
from epp.sim.config import LatencyModel, SimPodConfig
from epp.tokenization.tokenizer import SimpleTokenizer
from tests.helpers.streaming import distinct_prompt, first_token_at
from tests.unit.scheduling.sched_fakes import endpoint
from tests.unit.scheduling.sched_fakes import streamed_request as request

PER_KTOKEN_S = 0.25  # the known latency function: TTFT = 0.05 s + 0.25 s per 1k new tokens + queue wait
BASE_S = 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def untrained(clock: Clock) -> LatencyRuntime:
    rt = LatencyRuntime()
    rt.clock = rt.predictor.clock = clock
    return rt


def train(rt: LatencyRuntime) -> None:
    """Teach the predictor TTFT = BASE + PER_KTOKEN x new k tokens (+ the wait) from isolated
    requests (nothing queued), one pod."""
    for i in range(60):
        ktok = 0.5 + (i % 20)
        x = [1.0, ktok] + [0.0] * (N_FEATURES - 2)
        rt.predictor.observe("ttft", "default/p", x, BASE_S + PER_KTOKEN_S * ktok)
    assert rt.predictor.refit() and rt.predictor.ready


def trained(clock: Clock) -> LatencyRuntime:
    rt = untrained(clock)
    train(rt)
    return rt


def service(ktok: float) -> float:
    return BASE_S + PER_KTOKEN_S * ktok


def test_queue_clear_follows_a_virtual_fcfs_queue_corrected_by_first_bytes() -> None:
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    a = request("a" * 40_000, request_id="a")  # 10k tokens
    b = request("b" * 20_000, request_id="b")  # 5k tokens
    rt.on_dispatch(CycleState(), a, pod)
    clock.now += 1.0
    rt.on_dispatch(CycleState(), b, pod)  # queued behind a: starts when a is predicted done
    expected_clear = t0 + service(10.0) + service(5.0)
    assert rt.queue_clear_at[pod.key] == pytest.approx(expected_clear, rel=0.02)
    # A new request sees the wait as its queue feature, and its TTFT prediction includes it.
    x = rt.features(pod, 2000, 0)
    assert x[3] == pytest.approx(expected_clear - clock.now, rel=0.02)
    assert rt.predictor.predict(pod.key, x)[0] == pytest.approx(x[3] + service(2.0), rel=0.02)
    # a's first byte comes 2 s later than its virtual time: b (behind it) moves by 2 s too.
    clock.now = t0 + service(10.0) + 2.0
    rt.on_first_byte(a, 200)
    assert rt.queue_clear_at[pod.key] == pytest.approx(expected_clear + 2.0, rel=0.02)
    # b done: nothing pending, the queue is empty.
    clock.now += service(5.0)
    rt.on_first_byte(b, 200)
    assert rt.queue_clear_at[pod.key] == 0.0
    assert rt.features(pod, 2000, 0)[3] == 0.0
    rt.predictor.stop()


def test_untrained_runtime_charges_no_virtual_queue() -> None:
    clock = Clock()
    rt = untrained(clock)
    pod = endpoint("p", port=8000)
    rt.on_dispatch(CycleState(), request("a" * 40_000, request_id="a"), pod)
    assert rt.queue_clear_at.get(pod.key, 0.0) == 0.0
    assert rt.features(pod, 1000, 0)[3] == 0.0
    assert rt.pending_prefill[pod.key] == pytest.approx(10.0)


def observed_queue_times(rt: LatencyRuntime) -> Callable[[], dict[str, float]]:
    """The TTFT queue feature the predictor learnt, per request id, for the requests pending
    now (read when called). The predictor observes each record's own feature list at its
    first byte, so the value learnt is that list's, once a row equal to it is in the pod's TTFT
    window. Read from the predictor's stored observations rather than by wrapping its
    observe(): a compiled module's methods cannot be replaced (epp/latency/native.py). The
    record's list is read when called: a wait learnt in hindsight replaces it."""
    pending = {r.request.request_id: r for r in rt._records.values()}

    def learnt() -> dict[str, float]:
        windows = rt.predictor._series["ttft"].per_pod
        out: dict[str, float] = {}
        for request_id, record in pending.items():
            x, window = record.features, windows.get(record.pod)
            if window is not None and any(list(row) == list(x) for row in window.arrays()[0]):
                out[request_id] = x[QUEUE_CLEAR]
        return out

    return learnt


def assert_same_prediction(a: tuple[float, float], b: tuple[float, float]) -> None:
    """Equal, NaN equal to NaN (a tuple compares NaNs by identity first, which a compiled
    module's new float objects do not share)."""
    assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)), (a, b)


def test_a_wait_behind_untimed_requests_is_learnt_as_queue_time_in_hindsight() -> None:
    """Before the predictor is trained nothing enters the virtual queue: a request sent
    behind a 10k-token prompt has a queue feature of 0, and its wait would be learnt as the
    pod's slowness. Its queue feature is set, once it has its first byte, to the time from its
    dispatch to the first byte of the requests ahead of it; the head's stays 0."""
    clock = Clock()
    rt = untrained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 40_000, request_id="head")
    behind = request("b" * 4_000, request_id="behind")
    rt.on_dispatch(CycleState(), head, pod)
    clock.now += 0.5
    rt.on_dispatch(CycleState(), behind, pod)
    seen = observed_queue_times(rt)
    clock.now = t0 + 3.0
    rt.on_first_byte(head, 200)
    clock.now = t0 + 3.3
    rt.on_first_byte(behind, 200)
    assert seen() == {"head": 0.0, "behind": pytest.approx(2.5)}
    # Nothing pending: a later request on the idle pod keeps 0.
    alone = request("c" * 4_000, request_id="alone")
    rt.on_dispatch(CycleState(), alone, pod)
    assert rt._records[id(alone)].ahead is None


def test_a_response_not_streamed_ahead_does_not_time_the_wait_in_hindsight() -> None:
    """The wait learnt in hindsight runs to the last first byte of the requests ahead. A
    response not streamed has its headers at its end, after its prefill by as long as it
    decoded: it is left out, and the wait runs to the streamed head's first byte."""
    clock = Clock()
    rt = untrained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 40_000, request_id="head")
    whole = request("w" * 400, request_id="whole", stream=False)  # 100 tokens, short answer
    behind = request("b" * 4_000, request_id="behind")
    rt.on_dispatch(CycleState(), head, pod)
    rt.on_dispatch(CycleState(), whole, pod)
    clock.now += 0.5
    rt.on_dispatch(CycleState(), behind, pod)
    seen = observed_queue_times(rt)
    clock.now = t0 + 3.0
    rt.on_first_byte(head, 200)
    clock.now = t0 + 3.25  # the whole response, decoded in the steps after the head's prefill
    rt.on_first_byte(whole, 200)
    clock.now = t0 + 3.3
    rt.on_first_byte(behind, 200)
    assert seen() == {"head": 0.0, "behind": pytest.approx(2.5)}  # not 2.75


def test_a_request_behind_an_untimed_one_learns_its_wait_once_trained() -> None:
    """Trained now, but an older request sent before training is still pending (the virtual
    queue has no time for it): the one behind it learns its actual wait, not the virtual
    queue's. With every request ahead timed, the virtual queue's estimate is kept."""
    clock = Clock()
    rt = untrained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    old = request("o" * 40_000, request_id="old")
    rt.on_dispatch(CycleState(), old, pod)  # untrained: untimed
    train(rt)
    new = request("n" * 4_000, request_id="new")
    rt.on_dispatch(CycleState(), new, pod)
    later = request("l" * 4_000, request_id="later")
    seen = observed_queue_times(rt)
    clock.now = t0 + 4.0
    rt.on_first_byte(old, 200)
    clock.now = t0 + 4.2
    rt.on_first_byte(new, 200)
    assert seen()["new"] == pytest.approx(4.0)
    assert rt.untimed_pending[pod.key] == 0
    # Both timed: the queue feature is the virtual queue's at dispatch.
    first = request("f" * 40_000, request_id="first")
    rt.on_dispatch(CycleState(), first, pod)
    rt.on_dispatch(CycleState(), later, pod)
    virtual = rt._records[id(later)].features[QUEUE_CLEAR]
    assert virtual == pytest.approx(service(10.0), rel=0.02)
    seen = observed_queue_times(rt)
    clock.now += 1.0
    rt.on_first_byte(first, 200)
    rt.on_first_byte(later, 200)
    assert seen()["later"] == virtual
    rt.predictor.stop()


def test_a_younger_request_done_before_the_head_leaves_the_queue() -> None:
    """A short request batched with the head's last chunk produces its first byte long before
    its virtual time: its work is done (the queue loses its service), the head's timing is
    unknown still. When the head is done, what is left is the tail's service, from then."""
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 80_000, request_id="head")  # 20k tokens
    short = request("s" * 4_000, request_id="short")  # 1k tokens
    tail = request("t" * 20_000, request_id="tail")  # 5k tokens
    for r in (head, short, tail):
        rt.on_dispatch(CycleState(), r, pod)
    expected_clear = t0 + service(20.0) + service(1.0) + service(5.0)
    assert rt.queue_clear_at[pod.key] == pytest.approx(expected_clear, rel=0.02)
    clock.now += 0.5
    rt.on_first_byte(short, 200)  # far earlier than its virtual time, not the head
    assert rt.queue_clear_at[pod.key] == pytest.approx(expected_clear - service(1.0), rel=0.02)
    clock.now = t0 + service(20.0) - 1.0  # the head is 1 s early: the tail follows it
    rt.on_first_byte(head, 200)
    assert rt.queue_clear_at[pod.key] == pytest.approx(clock.now + service(5.0), rel=0.02)
    rt.predictor.stop()


def test_an_overdue_head_keeps_its_pod_looking_busy() -> None:
    """The virtual queue reads a pod idle once its head's predicted service has passed. When
    the model is wrong about the pod (a mis-learnt speed once put 11-62 s prompts at 0.3-0.9
    s, and 14 of 23 long prompts went to that pod), the pod looked idle to every later one.
    Once the head is late, its remaining time is taken as late x min(1, late / service): about
    0 a little late, as long again as it is late from twice its prediction on; the requests
    behind it follow it. When its first byte comes, the next head is timed from then."""
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 40_000, request_id="head")  # 10k tokens
    tail = request("b" * 20_000, request_id="tail")  # 5k tokens
    rt.on_dispatch(CycleState(), head, pod)
    rt.on_dispatch(CycleState(), tail, pod)
    due = t0 + service(10.0)
    clock.now = due - 1.0  # not late: the virtual queue as before
    assert rt.queue_wait(pod.key) == pytest.approx(1.0 + service(5.0), rel=0.02)
    clock.now = due + 0.25  # a little late (10% of its service): about nothing more
    late = 0.25
    assert rt.queue_wait(pod.key) == pytest.approx(late * late / service(10.0) + service(5.0), rel=0.02)
    assert rt.queue_wait(pod.key) < service(5.0) + 0.05
    for late in (service(10.0), 10.0, 30.0):  # twice its prediction and beyond: as long again
        clock.now = due + late
        assert rt.queue_wait(pod.key) == pytest.approx(late + service(5.0), rel=0.02)
        assert rt.features(pod, 2000, 0)[QUEUE_CLEAR] == rt.queue_wait(pod.key)
        # Before, the virtual queue read the pod idle: its clear time had passed.
        assert rt.queue_clear_at[pod.key] < clock.now
    # The head's first byte comes at last: the tail is due its service from then.
    rt.on_first_byte(head, 200)
    assert rt.queue_wait(pod.key) == pytest.approx(service(5.0), rel=0.02)
    clock.now += service(5.0) + 1.0  # the tail 1 s late (20% of its service)
    assert rt.queue_wait(pod.key) == pytest.approx(1.0 / service(5.0), rel=0.02)
    rt.on_first_byte(tail, 200)
    assert rt.queue_wait(pod.key) == 0.0
    rt.predictor.stop()


def test_a_request_queued_behind_a_waiting_one_joins_its_engine_step() -> None:
    """vLLM packs the prefills waiting on a pod into each step's token budget: chats that
    arrive while a long prompt runs all start in the step after it, and each adds only its
    tokens to that step. A chat sent while the last request's slot in the virtual queue has
    not started joins that slot's step: its TTFT is the queue wait plus its tokens' share, and
    so is what it adds to the queue. A chat behind a step already running waits for it, then
    a step of its own (its whole service)."""
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    long_prompt = request("a" * 40_000, request_id="long")  # 10k tokens: its slot starts at once
    rt.on_dispatch(CycleState(), long_prompt, pod)
    clock.now += 0.5
    assert not rt.joins_last_step(pod.key, clock.now)  # the long prompt's step is running
    first = request("b" * 2_000, request_id="first")  # 500 tokens
    rt.on_dispatch(CycleState(), first, pod)
    assert rt.queue_clear_at[pod.key] == pytest.approx(t0 + service(10.0) + service(0.5), rel=0.02)
    # The next chat waits in the same queue as `first`: it joins that step.
    clock.now += 0.5
    assert rt.joins_last_step(pod.key, clock.now)
    x = rt.features(pod, 1000, 0)
    share = PER_KTOKEN_S * 1.0
    assert rt.predict(pod.key, x)[0] == pytest.approx(x[QUEUE_CLEAR] + share, rel=0.02)
    assert rt.predict(pod.key, x)[0] < rt.predictor.predict(pod.key, x)[0] - 0.8 * BASE_S
    second = request("c" * 4_000, request_id="second")  # 1k tokens
    rt.on_dispatch(CycleState(), second, pod)
    assert rt.queue_clear_at[pod.key] == pytest.approx(t0 + service(10.0) + service(0.5) + share, rel=0.02)
    clock.now += 1.0  # a third chat, still before the long prompt is done: the same step
    third = request("d" * 4_000, request_id="third")
    rt.on_dispatch(CycleState(), third, pod)
    assert rt.queue_clear_at[pod.key] == pytest.approx(t0 + service(10.0) + service(0.5) + 2 * share, rel=0.02)
    # The long prompt's first byte, 0.1 s late: the chats' step starts then, and the queue
    # moves with it. A chat sent now waits for that step to end, then a step of its own.
    clock.now = t0 + service(10.0) + 0.1
    rt.on_first_byte(long_prompt, 200)
    assert rt.queue_clear_at[pod.key] == pytest.approx(clock.now + service(0.5) + 2 * share, rel=0.02)
    clock.now += 0.01
    assert not rt.joins_last_step(pod.key, clock.now)
    x = rt.features(pod, 1000, 0)
    # Element by element: a compiled module returns a new NaN object, and NaN != NaN.
    assert_same_prediction(rt.predict(pod.key, x), rt.predictor.predict(pod.key, x))
    late_chat = request("e" * 4_000, request_id="late")
    rt.on_dispatch(CycleState(), late_chat, pod)
    assert rt.queue_clear_at[pod.key] == pytest.approx(t0 + service(10.0) + 0.1 + service(0.5) + 2 * share
                                                       + service(1.0), rel=0.02)
    # The step of the three chats ends: the late chat's own step is running, nothing joins it.
    clock.now = t0 + service(10.0) + 0.1 + service(0.5) + 2 * share
    for chat in (first, second, third):
        rt.on_first_byte(chat, 200)
    assert not rt.joins_last_step(pod.key, clock.now + 0.01)
    rt.predictor.stop()


def test_a_response_not_streamed_teaches_nothing_and_is_never_late() -> None:
    """A response that is not streamed sends its headers with the whole response: the EPP's
    "first byte" is then its end, not its prefill's. It gives no TTFT or TPOT observation, and
    as the head of a pod's queue it is never taken for late (its prefill ended, when is not
    known); the virtual queue reads it done at its predicted time, as it did before."""
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    before = rt.predictor.sample_counts()
    t0 = clock.now
    whole = request("a" * 40_000, request_id="whole", stream=False)  # 10k tokens
    rt.on_dispatch(CycleState(), whole, pod)
    clock.now = t0 + service(10.0) + 20.0  # 20 s past its prefill: it is decoding
    assert rt.queue_wait(pod.key) == 0.0
    streamed = request("b" * 20_000, request_id="streamed")  # 5k tokens, behind it
    rt.on_dispatch(CycleState(), streamed, pod)
    assert rt.queue_wait(pod.key) == pytest.approx(service(5.0), rel=0.02)
    clock.now += 1.0
    rt.on_first_byte(whole, 200)  # its whole response: the streamed one's timing stays
    assert rt.queue_wait(pod.key) == pytest.approx(service(5.0) - 1.0, rel=0.02)
    rt.on_complete(whole, {"status": 200, "completion_tokens": 500})
    assert rt.predictor.sample_counts() == before
    clock.now += 1.0
    rt.on_first_byte(streamed, 200)
    rt.on_complete(streamed, {"status": 200, "completion_tokens": 11})
    assert rt.predictor.sample_counts() == {"ttft": before["ttft"] + 1, "tpot": before["tpot"] + 1}
    rt.predictor.stop()


def test_a_response_not_streamed_leaves_the_queue_at_its_virtual_first_byte() -> None:
    """Its headers come only with its whole response, seconds of decode after its prefill.
    Once its virtual first byte has passed, its prefill is taken as done then: its tokens stop
    counting as pending on the pod, and the streamed request behind it becomes the head, timed
    from that moment, so its lateness shows (queue_wait)."""
    clock = Clock()
    rt = trained(clock)
    pod = endpoint("p", port=8000)
    t0 = clock.now
    whole = request("a" * 40_000, request_id="whole", stream=False)  # 10k tokens
    streamed = request("b" * 20_000, request_id="streamed")  # 5k tokens, behind it
    rt.on_dispatch(CycleState(), whole, pod)
    rt.on_dispatch(CycleState(), streamed, pod)
    assert rt.features(pod, 1000, 0)[2] == pytest.approx(15.0)  # both pending
    clock.now = t0 + service(10.0) + 0.5  # the whole response is decoding; `streamed` prefills
    x = rt.features(pod, 1000, 0)
    assert x[2] == pytest.approx(5.0)  # only the streamed one is pending
    assert x[QUEUE_CLEAR] == pytest.approx(service(5.0) - 0.5, rel=0.02)
    assert rt.pending_count[pod.key] == 1
    # `streamed` runs 3x its predicted service: late, and the pod looks busy.
    clock.now = t0 + service(10.0) + 3 * service(5.0)
    late = 2 * service(5.0)
    assert rt.queue_wait(pod.key) == pytest.approx(late, rel=0.02)
    rt.on_first_byte(streamed, 200)
    assert rt.queue_wait(pod.key) == 0.0
    clock.now += 5.0
    rt.on_first_byte(whole, 200)  # its whole response, at last: nothing left to take off
    rt.on_complete(whole, {"status": 200, "completion_tokens": 500})
    assert rt.pending_prefill[pod.key] == 0.0 and rt.pending_count[pod.key] == 0
    rt.predictor.stop()


def test_dispatch_rate_follows_the_recent_rate_and_fades() -> None:
    """The pool's dispatch rate the queue-harm cost reads: 2 requests/s for 60 s over two
    pods reads ~2/s (an exponentially decayed count over 10 s), nothing sent reads 0, and the
    rate fades once nothing more is sent."""
    clock = Clock()
    rt = trained(clock)
    assert rt.dispatch_rate() == 0.0
    pods = [endpoint("p", port=8000), endpoint("q", port=8001)]
    for i in range(120):
        rt.on_dispatch(CycleState(), request("hi", request_id=f"r{i}"), pods[i % 2])
        clock.now += 0.5
    assert rt.dispatch_rate() == pytest.approx(2.0, rel=0.06)
    clock.now += 10.0  # one time constant
    assert rt.dispatch_rate() == pytest.approx(2.0 / 2.718, rel=0.06)
    clock.now += 90.0
    assert rt.dispatch_rate() < 0.001


def test_cycle_predicts_as_features_and_predict() -> None:
    """The cycle's unrolled loop, with each pod's state terms kept across cycles, predicts what
    features() and predict() do for every candidate: pods with their own model (inside and
    beyond their cover), without one, with a queue (joined or not), with prefix hits, while
    their state or the runtime's own ledger of them changes between cycles (dispatches, first
    bytes, stream ends) and the model is republished."""
    from epp.scheduling.types import CACHED_TOKENS_SUFFIX
    from tests.unit.scheduling.sched_fakes import request as plain_request

    clock = Clock()
    rt = untrained(clock)
    rt.score_without_slo = True
    rng = random.Random(7)
    for i in range(200):  # two pods with their own models (covers: 8k new tokens, 3 s of queue)
        pod = ("default/a", "default/b")[i % 2]
        x = [1.0, rng.uniform(0.1, 8.0), rng.uniform(0, 5), rng.uniform(0, 3.0), rng.randint(0, 4),
             rng.randint(0, 16), rng.randint(0, 20), rng.uniform(0, 3), rng.random()]
        # Shapes the pooled model x a speed cannot fit: each pod gets its own coefficients.
        own = 0.05 + 0.25 * x[1] + 0.01 * x[5] if pod == "default/a" else 0.6 + 0.02 * x[1] + 0.05 * x[4]
        rt.predictor.observe("ttft", pod, x, x[3] + own)
        rt.predictor.observe("tpot", pod, x, 0.01 + 0.002 * x[5] if pod == "default/a" else 0.05 - 0.001 * x[6])
    assert rt.predictor.refit()
    assert all(rt.predictor.models[p].ttft is not None for p in ("default/a", "default/b"))
    pods = [endpoint(name, port=8000 + i) for i, name in enumerate(("a", "b", "c", "d"))]
    checked = joined = beyond = 0
    in_flight: list[LLMRequest] = []
    decoding: list[LLMRequest] = []
    for step in range(120):
        ep = rng.choice(pods)
        if step % 2 == 0:  # on the other steps only the runtime's own ledger changes
            ep.metrics.waiting_queue_size = rng.randint(0, 4)
            ep.metrics.kv_cache_usage = rng.random()
            ep.inflight = rng.randint(0, 8)
        if step % 3 == 0:  # one in four not streamed: retired from the queue at its virtual first byte
            sent = (request if step % 4 else plain_request)("z" * rng.randint(400, 60_000), request_id=f"q{step}")
            rt.on_dispatch(CycleState(), sent, ep)
            in_flight.append(sent)
        if step % 5 == 4 and in_flight:  # a first byte, early or late (the queue moves with it)
            decoding.append(in_flight.pop(rng.randrange(len(in_flight))))
            rt.on_first_byte(decoding[-1], 200)
        if step % 11 == 10 and decoding:  # a stream end: the pod's in-flight decode falls
            rt.on_complete(decoding.pop(rng.randrange(len(decoding))), {"status": 200, "completion_tokens": 16})
        if step % 7 == 0:
            clock.now += rng.uniform(0.0, 2.0)
        if step == 60:  # a publication: every pod's model is new
            rt.predictor.observe("ttft", "default/a", [1.0, 1.0] + [0.0] * 7, 0.4)
            assert rt.predictor.refit()
        state = CycleState()
        prompt = "y" * rng.choice((400, 4000, 48_000))
        req = request(prompt, request_id=f"c{step}")
        if step % 2:  # as in a profile: predicted before a prefix scorer runs, then after it
            assert rt.cycle(state, req, pods) is not None
            state["prefix" + CACHED_TOKENS_SUFFIX] = {pods[0].key: rng.randint(0, 9000), pods[2].key: 64}
        cycle = rt.cycle(state, req, pods)
        assert cycle is not None
        prefix = state.get("prefix" + CACHED_TOKENS_SUFFIX, {})
        keys = [p.key for p in pods]
        # Before any feature vector is read: the scorer's service times from the cycle's inputs.
        assert rt.service_times(cycle, keys) == pytest.approx(
            [rt.predictor.service_time(k, cycle.new_tokens(k)) for k in keys], rel=1e-12, abs=1e-12)
        assert not cycle.features
        for p in pods:
            x = rt.features(p, len(prompt) // 4, prefix.get(p.key, 0))
            assert cycle.features_of(p.key) == pytest.approx(x, rel=1e-12, abs=1e-12)
            assert cycle.by_key[p.key] == pytest.approx(rt.predict(p.key, x), rel=1e-12, abs=1e-12)
            joined += rt.joins_last_step(p.key, clock.now)
            # The queue's service total, kept by dispatches and releases, is its records' sum.
            queued = [r.service for r in rt._pending_order.get(p.key, {}).values()]
            assert rt.queued_service.get(p.key, 0.0) == pytest.approx(sum(queued), abs=1e-9)
            beyond += x[1] > 1.25 * 8.0 + 0.5
            checked += 1
    assert checked == 480 and joined > 10 and beyond > 10
    rt.predictor.stop()


STEP_BASE_S, STEP_PER_KTOKEN_S = 0.06, 0.5  # the pod's true engine step in the tests below


def true_step(ktok: float) -> float:
    return STEP_BASE_S + STEP_PER_KTOKEN_S * ktok


def run_back_to_back_steps(rt: LatencyRuntime, clock: Clock, pod_name: str, groups: int) -> None:
    """A pod busy with bursts of chats: the requests of group g are sent while step g - 1
    runs, and vLLM prefills them together in step g, which starts when step g - 1 ends and
    lasts true_step(their tokens). Each gets its first byte at the end of its step."""
    pod = endpoint(pod_name, port=8000)
    rng = __import__("random").Random(11)
    end = clock.now + 0.3
    first = request("z" * 1_200, request_id=f"{pod_name}-warm")  # 300 tokens
    rt.on_dispatch(CycleState(), first, pod)
    pending = [first]
    for g in range(groups):
        members = []
        for j, before in enumerate((0.1, 0.05, 0.03)[: rng.randint(1, 3)]):
            clock.now = end - before
            r = request(chr(97 + j) * (4 * rng.randint(100, 700)), request_id=f"{pod_name}-{g}-{j}")
            rt.on_dispatch(CycleState(), r, pod)
            members.append(r)
        clock.now = end
        for r in pending:
            rt.on_first_byte(r, 200)
        ktok = sum(len(r.prompt_text()) // 4 for r in members) / 1000.0
        end += true_step(ktok)
        pending = members
    clock.now = end
    for r in pending:
        rt.on_first_byte(r, 200)


def test_the_runtime_learns_a_pods_engine_step_from_its_first_bytes() -> None:
    """The first bytes of a busy pod mark its step ends. The runtime learns the pod's step time
    from them (epp/latency/steps.py), and charges the virtual queue with it: a step of its
    own, base + per-token time, or its tokens' share of a step it joins. The pod's linear
    model (the trained() one, 0.05 s + 0.25 s per 1k tokens) is not what its steps take."""
    clock = Clock()
    rt = trained(clock)
    run_back_to_back_steps(rt, clock, "p", groups=40)
    assert rt.predictor.refit()
    model = rt.predictor.pod_model("default/p")
    assert model.step_base == pytest.approx(STEP_BASE_S, rel=0.02)
    assert model.step_per_ktoken == pytest.approx(STEP_PER_KTOKEN_S, rel=0.02)
    assert rt.predictor.queue_service("default/p", 0.4) == pytest.approx(true_step(0.4), rel=0.02)
    assert rt.predictor.step_share("default/p", 0.4) == pytest.approx(STEP_PER_KTOKEN_S * 0.4, rel=0.02)
    # Beyond the steps it has seen (at most 2.1k tokens), the linear model stands.
    assert model.step_cover < 10.0
    assert rt.predictor.queue_service("default/p", 10.0) == rt.predictor.service_time("default/p", 10.0)
    # A pod that never ran back-to-back steps has none: its linear model serves.
    assert rt.predictor.queue_service("default/other", 0.4) == rt.predictor.service_time("default/other", 0.4)

    # A burst on the now idle pod: the first chat starts a step at once (the linear model
    # predicts it); the second, sent while that step runs, waits for it and then takes a step of
    # its own; the third joins that second step.
    pod = endpoint("p", port=8000)
    t0 = clock.now = clock.now + 5.0
    a = request("a" * 2_000, request_id="burst-a")  # 500 tokens
    rt.on_dispatch(CycleState(), a, pod)
    clock.now += 0.05
    x = rt.features(pod, 400, 0)
    assert x[QUEUE_CLEAR] == pytest.approx(true_step(0.5) - 0.05, rel=0.02)
    assert rt.predict(pod.key, x)[0] == pytest.approx(x[QUEUE_CLEAR] + true_step(0.4), rel=0.02)
    b = request("b" * 1_600, request_id="burst-b")  # 400 tokens
    rt.on_dispatch(CycleState(), b, pod)
    clock.now += 0.05
    x = rt.features(pod, 600, 0)
    assert rt.joins_last_step(pod.key, clock.now)
    assert rt.predict(pod.key, x)[0] == pytest.approx(t0 + true_step(0.5) + true_step(0.4) + STEP_PER_KTOKEN_S * 0.6
                                                      - clock.now, rel=0.02)
    rt.predictor.stop()


def test_a_step_others_joined_is_due_at_its_end_and_takes_requests_until_the_step_ahead_ends() -> None:
    """Two rules of the virtual queue's steps. The head of the queue is due when its step
    ends, its own charge and the shares of those that joined it: timed by its own charge
    alone it read as late, and the wait behind it as too long. And the last queued step
    takes new requests until the step ahead of it ends (its first byte), however late that
    comes: steps run one after the other."""
    clock = Clock()
    rt = trained(clock)
    run_back_to_back_steps(rt, clock, "p", groups=40)
    assert rt.predictor.refit()
    pod = endpoint("p", port=8000)
    t0 = clock.now = clock.now + 5.0
    a = request("a" * 2_000, request_id="a")  # 500 tokens: starts a step at once
    rt.on_dispatch(CycleState(), a, pod)
    clock.now += 0.01
    b = request("b" * 2_000, request_id="b")  # waits for a's step: starts the next one
    rt.on_dispatch(CycleState(), b, pod)
    clock.now += 0.01
    c = request("c" * 4_000, request_id="c")  # 1k tokens: joins b's step
    rt.on_dispatch(CycleState(), c, pod)
    b_step_end = t0 + true_step(0.5) + true_step(0.5) + STEP_PER_KTOKEN_S * 1.0
    assert rt.queue_clear_at[pod.key] == pytest.approx(b_step_end, rel=1e-6)
    # a's step runs 0.1 s late; until its first byte, new requests still join b's step.
    clock.now = t0 + true_step(0.5) + 0.05
    assert rt._step_start[pod.key] < clock.now
    assert rt.joins_last_step(pod.key, clock.now)
    d = request("d" * 400, request_id="d")  # 100 tokens
    rt.on_dispatch(CycleState(), d, pod)
    clock.now = t0 + true_step(0.5) + 0.1
    rt.on_first_byte(a, 200)
    step = true_step(0.5) + STEP_PER_KTOKEN_S * 1.1  # b's step, with c and d
    assert rt.queue_wait(pod.key) == pytest.approx(step, rel=1e-6)
    # Past b's own charge, b's step is not late: the wait is what is left of it.
    clock.now += true_step(0.5) + 0.1
    assert rt.queue_wait(pod.key) == pytest.approx(step - true_step(0.5) - 0.1, rel=1e-6)
    # b's step ends now; a request sent after that starts a step of its own.
    clock.now += step - true_step(0.5) - 0.1
    for r in (b, c, d):
        rt.on_first_byte(r, 200)
    assert not rt.joins_last_step(pod.key, clock.now)
    rt.predictor.stop()


def test_the_prompt_next_in_line_is_partly_prefilled_in_the_heads_last_step() -> None:
    """vLLM fills each step's token budget first come, first served: the step that ends a
    prefill also starts the next prompt's with the budget its last chunk left. At the head's
    first byte, the queue takes that part of the next prompt's service off, when the next one
    was sent before the head's last step began, and the step budget is known."""
    def run(chunk_tokens: int, head_chars: int, sent_after_s: float) -> tuple[float, float]:
        clock = Clock()
        rt = trained(clock)
        rt.chunk_tokens = chunk_tokens
        pod = endpoint("p", port=8000)
        t0 = clock.now
        head = request("a" * head_chars, request_id="head")
        nxt = request("b" * 80_000, request_id="next")  # 20k tokens
        rt.on_dispatch(CycleState(), head, pod)
        clock.now += sent_after_s
        rt.on_dispatch(CycleState(), nxt, pod)
        clock.now = t0 + service(head_chars / 4000.0) + 0.2  # the head's first byte, a little late
        rt.on_first_byte(head, 200)
        left = rt.queue_clear_at[pod.key] - clock.now
        clock.now += left
        rt.on_first_byte(nxt, 200)  # the queue empties whatever the credit was
        assert rt.queue_clear_at[pod.key] == 0.0 and rt.queued_service[pod.key] == 0.0
        rt.predictor.stop()
        return left, service(20.0)

    # A 10k-token head leaves 8192 x 2 - 10,000 = 6,384 tokens of its last step to the next.
    left, whole = run(8192, 40_000, 0.1)
    assert left == pytest.approx(whole - PER_KTOKEN_S * 6.384, rel=0.03)
    # Unknown budget; the next prompt sent after the head's last step began (a full step,
    # 0.05 + 0.25 x 8.192 s, before its first byte); a head that ends on a step boundary: its
    # whole service is still ahead.
    assert run(0, 40_000, 0.1)[0] == pytest.approx(whole, rel=0.03)
    assert run(8192, 40_000, 0.8)[0] == pytest.approx(whole, rel=0.03)
    assert run(8192, 4 * 8192, 0.1)[0] == pytest.approx(whole, rel=0.03)


def test_the_carried_credit_is_the_tokens_time_on_a_pod_with_a_ttft_floor() -> None:
    """On a pod whose short prompts never answer faster than an engine step (a TTFT floor above
    the fit's intercept, as on every bench pod), the credit of the tokens carried into the
    head's last step is still their per-token time. A difference of floored service times
    took the floor's lift off an empty prompt out of it (here 0.16 s), and gave a few hundred
    carried tokens no credit at all. The last-chunk cost counts those seconds the same way."""
    clock = Clock()
    rt = untrained(clock)
    for i in range(80):
        # The same latency function; the shortest prompts seen have 600 tokens, so the floor
        # (the 5th percentile of short prompts' TTFTs) is about 0.21 s, the intercept 0.05 s.
        ktok = 0.6 + 0.05 * (i % 8) if i % 2 else 1.5 + (i % 20)
        x = [1.0, ktok] + [0.0] * (N_FEATURES - 2)
        rt.predictor.observe("ttft", "default/p", x, service(ktok))
    assert rt.predictor.refit()
    model = rt.predictor.pod_model("default/p")
    assert model.ttft_floor == pytest.approx(service(0.6), abs=0.02) and model.service_time(0.0) == model.ttft_floor
    credit = model.step_share(6.384)
    assert credit == pytest.approx(PER_KTOKEN_S * 6.384, rel=0.01)
    # What a difference of service times credited: the floor's lift (0.16 s) less.
    lift = model.ttft_floor - BASE_S
    assert lift > 0.14
    assert model.service_time(6.384) - model.service_time(0.0) == pytest.approx(credit - lift, abs=0.005)
    rt.chunk_tokens = 8192
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 40_000, request_id="head")  # 10k tokens: 6,384 of its last step free
    nxt = request("b" * 80_000, request_id="next")
    rt.on_dispatch(CycleState(), head, pod)
    clock.now += 0.1
    rt.on_dispatch(CycleState(), nxt, pod)
    clock.now = t0 + service(10.0) + 0.2
    rt.on_first_byte(head, 200)
    left = rt.queue_clear_at[pod.key] - clock.now
    whole = model.service_time(20.0)
    assert whole - left == pytest.approx(credit, rel=0.01)
    rt.predictor.stop()


def test_a_chat_sent_behind_a_long_prompt_is_credited_only_its_part_in_the_last_step() -> None:
    """The credit never exceeds the next request's own service: a chat that fits in the free
    budget of the head's last step is left its fixed part at most."""
    clock = Clock()
    rt = trained(clock)
    rt.chunk_tokens = 8192
    pod = endpoint("p", port=8000)
    t0 = clock.now
    head = request("a" * 40_000, request_id="head")  # 10k tokens
    chat = request("c" * 8_000, request_id="chat")  # 2k tokens, all within the 6,384 left
    rt.on_dispatch(CycleState(), head, pod)
    clock.now += 0.1
    rt.on_dispatch(CycleState(), chat, pod)
    clock.now = t0 + service(10.0)
    rt.on_first_byte(head, 200)
    left = rt.queue_clear_at[pod.key] - clock.now
    assert 0.0 <= left <= service(2.0) - PER_KTOKEN_S * 2.0 + 0.02  # its fixed part at most
    rt.predictor.stop()


async def test_the_queue_after_a_first_byte_matches_the_simulator() -> None:
    """Against a real simulated pod, which schedules a step as vLLM does (running requests
    first, then the waiting ones first come first served, within max_num_batched_tokens): two
    12k-token prompts, the second sent while the first is in its first step. About 4,400
    of the second's tokens go in the first's last step. At the first one's first byte the
    runtime's queue must say when the second's comes: with the step budget known, within a
    few hundredths of a second; without it, its whole prefill late by what the last step
    carried."""
    budget = SimPodConfig().max_num_batched_tokens
    prompts = {chunk: tuple(distinct_prompt(f"queue-{chunk}-{n}", 12_000) for n in range(2)) for chunk in (budget, 0)}
    errors: dict[int, float] = {}
    async with (simulated_pods(1, max_model_len=40_000) as cluster, httpx.AsyncClient(timeout=60) as client):
        url = cluster.urls[0]
        pod = endpoint("sim", port=8000)
        for chunk, (first_prompt, second_prompt) in prompts.items():
            rt = LatencyRuntime()
            rt.chunk_tokens = chunk
            # What the predictor learns from requests alone on the pod: the simulator's step
            # model (epp.bench.latency_placement.idle_ttft_s).
            for i in range(60):
                ktok = 0.5 + (i % 24)
                x = [1.0, ktok] + [0.0] * (N_FEATURES - 2)
                rt.predictor.observe("ttft", pod.key, x, idle_ttft_s(int(ktok * 1000), 1.0))
            assert rt.predictor.refit()
            tokens = [len(SimpleTokenizer().encode(p)) for p in (first_prompt, second_prompt)]
            # The second prompt is longer than what the first's last step can carry of it.
            assert all(11_000 < t <= 12_000 for t in tokens) and tokens[1] > budget - tokens[0] % budget
            # The runtime counts a prompt's tokens as its characters / 4.
            first_req, second_req = (request("x" * (t * 4), request_id=f"{chunk}-{n}") for n, t in enumerate(tokens))
            first = asyncio.create_task(first_token_at(client, url, first_prompt))
            rt.on_dispatch(CycleState(), first_req, pod)
            await asyncio.sleep(0.1)  # the first prompt is in its first step (~0.46 s)
            second = asyncio.create_task(first_token_at(client, url, second_prompt))
            rt.on_dispatch(CycleState(), second_req, pod)
            _, first_at = await first
            rt.clock = lambda at=first_at: at  # type: ignore[misc]
            rt.on_first_byte(first_req, 200)
            predicted = rt.queue_clear_at[pod.key]
            _, second_at = await second
            errors[chunk] = predicted - second_at
            rt.predictor.stop()
    carried = budget - tokens[0] % budget  # the second prompt's tokens in the first's last step
    per_token = LatencyModel().prefill_per_token_ms / 1000.0
    assert abs(errors[budget]) < 0.25 * carried * per_token, errors
    assert errors[0] > 0.6 * carried * per_token, errors


@pytest.mark.parametrize("ready", [True, False], ids=["trained", "untrained"])
def test_running_tpot_harms_follow_every_change_of_a_pods_guard(ready: bool) -> None:
    """running_tpot_harms keeps each pod's stall budgets left, sorted, between decisions, and
    drops them when the pod's guard changes. Through a random run of dispatches (with and
    without TPOT targets, of every size), first bytes and completions on three pods, its
    counts equal the formula over the requests in flight after every event: a request with
    0 <= stall budget - stalled < the stall counts. Untrained, no prefill stalls anyone (its
    service is unknown), and only new requests change a guard."""
    clock = Clock()
    rt = trained(clock) if ready else untrained(clock)
    pods = [endpoint(name, port=8000 + i) for i, name in enumerate("pqr")]
    keys = [ep.key for ep in pods]
    rng = random.Random(5)
    open_requests: list[LLMRequest] = []

    def formula(stall: float) -> list[tuple[int, int]]:
        out = []
        for j, key in enumerate(keys):
            records = rt.tpot_slo_inflight.get(key, {}).values()
            harmed = sum(1 for r in records if 0.0 <= r.stall_budget - r.stalled < stall)
            if harmed:
                out.append((j, harmed))
        return out

    seen: set[int] = set()
    for i in range(400):
        clock.now += rng.uniform(0.0, 0.3)
        event = rng.random()
        if event < 0.5 or not open_requests:
            headers = {"x-llm-d-slo-tpot-ms": str(rng.choice((20, 50, 150)))} if rng.random() < 0.8 else {}
            req = request("w " * rng.randint(10, 6000), request_id=f"h{i}", headers=headers,
                          max_tokens=rng.choice((None, 1, 16, 200)))
            rt.on_dispatch(CycleState(), req, rng.choice(pods))
            open_requests.append(req)
        elif event < 0.75:
            rt.on_first_byte(rng.choice(open_requests), 200)
        else:
            req = open_requests.pop(rng.randrange(len(open_requests)))
            rt.on_complete(req, {"status": 200, "completion_tokens": 10})
        for stall in (0.01, 0.1, 0.5, 2.0, 10.0):
            expected = formula(stall)
            assert rt.running_tpot_harms(keys, [stall] * 3) == expected, (i, stall)
            seen.add(sum(h for _, h in expected))
    assert len(seen) >= 6  # the run sees many different counts
    rt.predictor.stop()


def test_a_request_for_a_pod_prefilling_a_long_prompt_waits_for_its_first_byte() -> None:
    """Deferral (deferBehindPrefillTokens): sent at once, a chat would be prefilled in the long
    prompt's last step, and lengthen it by its tokens. Held in the EPP until the long prompt's
    first byte, it takes a step of its own right after: the queue times it so, the last-chunk
    cost reads nothing to share, and the chats after it join its step and its wait."""
    clock = Clock()
    rt = trained(clock)
    rt.chunk_tokens = 8192
    rt.defer_min_ktokens, rt.max_defer_s = 8.192, 10.0
    pod = endpoint("p", port=8000)
    t0 = clock.now
    long_prompt = request("a" * 40_000, request_id="long")  # 10k tokens: 6,384 of its last step free
    assert rt.on_dispatch(CycleState(), long_prompt, pod) is None  # nothing ahead of it
    clock.now += 0.5
    assert rt.last_chunk_free_tokens(pod.key, 8192) == 0  # a request sent now would wait
    assert not rt.joins_last_step(pod.key, clock.now)
    chat = request("c" * 4_000, request_id="chat")  # 1k tokens
    deferral = rt.on_dispatch(CycleState(), chat, pod)
    assert deferral is not None and deferral.head == id(long_prompt)
    # Until the long prompt's virtual first byte, and half as long again, plus the margin.
    assert deferral.deadline == pytest.approx(clock.now + 1.5 * (t0 + service(10.0) - clock.now) + 0.25)
    # Its own step after the long prompt's first byte, not a share of its last step.
    assert rt.queue_clear_at[pod.key] == pytest.approx(t0 + service(10.0) + service(1.0))
    clock.now += 0.1
    assert rt.joins_last_step(pod.key, clock.now)  # the next chat joins the held step
    chat2 = request("d" * 4_000, request_id="chat2")
    assert rt.on_dispatch(CycleState(), chat2, pod) is deferral
    assert [r.request for r in deferral.records] == [chat, chat2]
    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_future()
        deferral.add_waiter(waiter)
        clock.now = t0 + service(10.0) - 0.3  # a little early
        rt.on_first_byte(long_prompt, 200)
        assert waiter.done() and deferral.released
        assert all(r.sent == clock.now for r in deferral.records)
        # epp_latency_deferral_seconds: the two held chats, sent 0.5 and 0.6 s after the long prompt.
        held = {s.name: s.value for m in rt.metrics.deferred.collect() for s in m.samples}
        assert held["epp_latency_deferral_seconds_count"] == 2
        assert held["epp_latency_deferral_seconds_sum"] == pytest.approx(2 * (service(10.0) - 0.3) - 0.5 - 0.6)
        # Nothing of the held chats was prefilled in the long prompt's last step: no credit.
        share = rt.predictor.step_share(pod.key, 1.0)
        assert rt.queue_clear_at[pod.key] == pytest.approx(clock.now + service(1.0) + share)
        # The held ones go now: a request sent after them is not held.
        assert rt.on_dispatch(CycleState(), request("e" * 4_000, request_id="late"), pod) is None
    finally:
        loop.close()
        rt.predictor.stop()


def test_deferral_waits_only_behind_a_long_streamed_prompt_with_room_in_its_last_step() -> None:
    clock = Clock()

    def held(head_chars: int, *, stream: bool = True, min_ktokens: float = 8.192, chunk: int = 8192) -> bool:
        rt = trained(clock)
        rt.chunk_tokens = chunk
        rt.defer_min_ktokens, rt.max_defer_s = min_ktokens, 10.0
        pod = endpoint("p", port=8000)
        head = request("a" * head_chars, request_id="head")
        head.stream = stream
        rt.on_dispatch(CycleState(), head, pod)
        clock.now += 0.2
        deferral = rt.on_dispatch(CycleState(), request("c" * 4_000, request_id="chat"), pod)
        rt.predictor.stop()
        return deferral is not None

    assert held(40_000)  # 10k tokens
    assert not held(20_000)  # 5k tokens: under the threshold
    assert not held(40_000, min_ktokens=0.0)  # off
    assert not held(40_000, stream=False)  # its headers come with the whole response
    assert not held(4 * 16_384)  # 16,384 tokens end on a step boundary: nothing would join
    assert not held(40_000, chunk=0)  # the step budget unknown


async def test_a_deferral_past_its_deadline_lets_its_requests_go() -> None:
    from epp.scheduling.plugins.predicted_latency_producer import _deferred
    clock = Clock()
    rt = trained(clock)
    rt.chunk_tokens = 8192
    rt.defer_min_ktokens, rt.max_defer_s = 8.192, 0.05
    pod = endpoint("p", port=8000)
    long_prompt = request("a" * 40_000, request_id="long")
    rt.on_dispatch(CycleState(), long_prompt, pod)
    deferral = rt.on_dispatch(CycleState(), request("c" * 4_000, request_id="chat"), pod)
    assert deferral is not None and deferral.deadline == clock.now + 0.05
    started = asyncio.get_running_loop().time()
    await _deferred(deferral, rt)  # the fake clock stands still: the deadline is 50 ms away
    assert 0.04 <= asyncio.get_running_loop().time() - started < 1.0
    assert deferral.released and rt.on_dispatch(CycleState(), request("d" * 4_000), pod) is not deferral
    rt.predictor.stop()
