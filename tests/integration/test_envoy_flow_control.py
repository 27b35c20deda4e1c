"""Flow control through the real Envoy, EPP and simulated pod: with the pool saturated
(concurrency-detector, one request per pod) a request waits in the EPP and is routed when
capacity frees; queue limits and TTL expiry answer 429 (llm-d-router: backpressure while the
pool has endpoints), a request that waited noEndpointRequestTTL with no healthy endpoint 503,
all with Retry-After and an OpenAI error body; a client that disconnects while queued leaves
the queue at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path

import httpx
import pytest

from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
- type: queue-scorer
- type: max-score-picker
saturationDetector: {pluginRef: concurrency-detector}
flowControl:
  defaultRequestTTL: 20s
  priorityBands:
  - {priority: 1, maxRequests: 2}
  requestTTLByObjective: {batch-sheddable: 300ms}
"""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    path = Path(tmp_path_factory.mktemp("fc")) / "epp-config.yaml"
    path.write_text(CONFIG)
    # Envoy's ext_proc message timeout must outlast the longest wait in the EPP's queue.
    return stack_factory(pods=1, time_scale=0.5, kv_events=False, epp_config=path,
                         envoy_message_timeout_ms=60_000)


def body(max_tokens: int) -> dict[str, object]:
    return {"model": MODEL, "prompt": "flow control", "max_tokens": max_tokens}


async def metric(client: httpx.AsyncClient, stack: LocalStack, name: str, **labels: str) -> float:
    text = (await client.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def until(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_queued_request_dispatches_when_capacity_frees(stack: LocalStack) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            first = asyncio.create_task(timed(client.post(url, json=body(300))))
            size = "inference_extension_flow_control_queue_size"
            await until(lambda: metric(client, stack, "inference_extension_flow_control_requests_total",
                                       outcome="Dispatched"))
            second = asyncio.create_task(timed(client.post(url, json=body(1))))
            await until(lambda: _eq(metric(client, stack, size), 1.0))  # waiting in the EPP
            (r1, t1), (r2, t2) = await first, await second
            assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
            # A 1-token request finishes in milliseconds once routed: it was held until the
            # 300-token one had finished.
            assert t2 >= t1
            assert await metric(client, stack, size) == 0.0
            waited = await metric(client, stack,
                                  "inference_extension_flow_control_request_queue_duration_seconds_count",
                                  outcome="Dispatched")
            assert waited >= 1
    asyncio.run(scenario())


async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    response = await call
    return response, time.monotonic()


async def _eq(value: object, expected: float) -> bool:
    return await value == expected  # type: ignore[misc]


def test_ttl_expiry_and_full_band_are_429_with_retry_after(stack: LocalStack) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            busy = asyncio.create_task(client.post(url, json=body(300)))
            await asyncio.sleep(0.3)
            # batch-sheddable has a 300 ms TTL: it times out in the queue.
            t0 = time.monotonic()
            r = await client.post(url, json=body(1), headers={"x-gateway-inference-objective": "batch-sheddable"})
            assert r.status_code == 429, r.text
            assert 0.25 <= time.monotonic() - t0 < 2.0
            assert r.headers["retry-after"] == "1"
            assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"
            assert r.json()["error"]["code"] == "flow_control_ttl_expired"
            # Priority band 1 (llama3-8b-instruct) holds at most 2 queued requests: the third is refused.
            hdr = {"x-gateway-inference-objective": "llama3-8b-instruct"}
            queued = [asyncio.create_task(client.post(url, json=body(1), headers=hdr)) for _ in range(2)]
            await until(lambda: _eq(metric(client, stack, "inference_extension_flow_control_queue_size",
                                           priority="1"), 2.0))
            r = await client.post(url, json=body(1), headers=hdr)
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "flow_control_queue_full"
            assert r.json()["error"]["type"] == "RateLimitError"
            assert (await busy).status_code == 200
            assert [(await q).status_code for q in queued] == [200, 200]
    asyncio.run(scenario())


def test_client_disconnect_removes_queued_request(stack: LocalStack) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            cancelled = "inference_extension_flow_control_requests_total"
            before = await metric(client, stack, cancelled, outcome="EvictedContextCancelled")
            busy = asyncio.create_task(client.post(url, json=body(400)))
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=0.5) as impatient:
                with pytest.raises(httpx.TimeoutException):
                    await impatient.post(url, json=body(1))
            # Envoy closes the ext_proc stream; the EPP drops the request well before `busy` ends.
            await until(lambda: _eq(metric(client, stack, cancelled, outcome="EvictedContextCancelled"),
                                    before + 1), timeout=1.0)
            assert await metric(client, stack, "inference_extension_flow_control_queue_size") == 0.0
            assert not busy.done()
            assert (await busy).status_code == 200
    asyncio.run(scenario())


EVICTION_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
- type: queue-scorer
- type: max-score-picker
flowControl:
  defaultRequestTTL: 20s
  requestTTLByObjective: {llama3-8b-instruct: 500ms}
  enableEviction: true
"""


def test_eviction_of_inflight_sheddable_request(stack_factory: StackFactory, tmp_path: Path) -> None:
    path = tmp_path / "epp-config.yaml"
    path.write_text(EVICTION_CONFIG)
    # Eviction needs the response to stream through the EPP (response_body_mode STREAMED).
    stack = stack_factory(pods=1, time_scale=1.0, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000, response_body_mode="STREAMED")

    async def sheddable(client: httpx.AsyncClient, url: str) -> tuple[str, float]:
        """Stream a ~10 s sheddable completion; how it ended and when."""
        done = False
        try:
            async with client.stream("POST", url, json={**body(1000), "stream": True},
                                     headers={"x-gateway-inference-objective": "batch-sheddable"}) as r:
                async for line in r.aiter_lines():
                    done = done or line.strip() == "data: [DONE]"
        except httpx.HTTPError as e:  # Envoy resets the stream
            return type(e).__name__, time.monotonic()
        return ("completed" if done else "truncated"), time.monotonic()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            shed = asyncio.create_task(sheddable(client, url))
            await asyncio.sleep(0.5)  # streaming, holding the only slot
            t0 = time.monotonic()
            r = await client.post(url, json=body(1), headers={"x-gateway-inference-objective": "llama3-8b-instruct"})
            # Past its 500 ms TTL the critical request is routed in place of the evicted one.
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < 3.0
            outcome, t_end = await shed
            assert outcome in ("RemoteProtocolError", "ReadError", "truncated"), outcome
            assert t_end - t0 < 3.0
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="EvictedInFlight") == 1.0
    asyncio.run(scenario())


PRIORITY_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
- type: queue-scorer
- type: max-score-picker
flowControl:
  maxRequests: 2
  defaultRequestTTL: 30s
"""


def test_priority_order_and_displacement(stack_factory: StackFactory, tmp_path: Path) -> None:
    path = tmp_path / "epp-config.yaml"
    path.write_text(PRIORITY_CONFIG)
    stack = stack_factory(pods=1, time_scale=0.5, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000)
    objective = {"critical": "llama3-8b-instruct", "sheddable": "batch-sheddable"}

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            size = "inference_extension_flow_control_queue_size"

            def send(kind: str, max_tokens: int = 1) -> asyncio.Task[tuple[httpx.Response, float]]:
                headers = {"x-gateway-inference-objective": objective[kind]} if kind in objective else {}
                return asyncio.create_task(timed(client.post(url, json=body(max_tokens), headers=headers)))

            busy = send("standard", 1000)  # ~5 s: everything below happens while it runs
            await until(lambda: metric(client, stack, "inference_extension_flow_control_requests_total",
                                       outcome="Dispatched"))
            shed = send("sheddable")
            await until(lambda: _eq(metric(client, stack, size), 1.0))
            std = send("standard")
            await until(lambda: _eq(metric(client, stack, size), 2.0))  # the global limit is reached
            # Another sheddable request finds nothing of lower priority to displace: 429 at once.
            r = await client.post(url, json=body(1), headers={"x-gateway-inference-objective": objective["sheddable"]})
            assert r.status_code == 429 and r.json()["error"]["code"] == "flow_control_queue_full", r.text
            # A critical one displaces the queued sheddable request.
            crit = send("critical")
            r_shed, _ = await shed
            assert r_shed.status_code == 429, r_shed.text
            assert r_shed.json()["error"]["code"] == "flow_control_displaced"
            assert r_shed.headers["retry-after"] == "1"
            (r_busy, t_busy), (r_crit, t_crit), (r_std, t_std) = await busy, await crit, await std
            assert [r_busy.status_code, r_crit.status_code, r_std.status_code] == [200, 200, 200]
            # Capacity freed once: the critical request (queued last) went before the standard one.
            assert t_busy <= t_crit < t_std
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="Displaced", priority="-1") == 1.0
    asyncio.run(scenario())


HOLDBACK_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 2}
- type: priority-holdback-policy
  parameters: {minCeiling: 0.5}
- type: queue-scorer
- type: max-score-picker
flowControl:
  defaultRequestTTL: 1500ms
  priorityBands: [{priority: 1}, {priority: 0}]   # ceilings 1.0 and 0.5
  usageLimitPolicyPluginRef: priority-holdback-policy
  enableEviction: true
  evictionDelay: 0s
  evictionVictimMaxPriority: 0
"""


def test_holdback_reserves_a_slot_and_eviction_frees_one_at_once(stack_factory: StackFactory,
                                                                tmp_path: Path) -> None:
    """One pod, 2 slots: standard work stops at 1 (ceiling 0.5), so a critical request goes
    straight through; with both slots taken, the next critical request evicts the in-flight
    standard one at once (evictionDelay 0s) instead of waiting for a slot."""
    path = tmp_path / "epp-config.yaml"
    path.write_text(HOLDBACK_CONFIG)
    stack = stack_factory(pods=1, time_scale=1.0, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000, response_body_mode="STREAMED")
    critical = {"x-gateway-inference-objective": "llama3-8b-instruct"}

    async def stream(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                     first: asyncio.Event) -> str:
        """A ~10 s streamed completion: how it ended."""
        try:
            async with client.stream("POST", url, json={**body(1000), "stream": True}, headers=headers) as r:
                async for _ in r.aiter_bytes():
                    first.set()
        except httpx.HTTPError as e:  # Envoy resets the evicted stream
            return type(e).__name__
        return "completed"

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            std_started, crit_started = asyncio.Event(), asyncio.Event()
            std = asyncio.create_task(stream(client, url, {}, std_started))
            await asyncio.wait_for(std_started.wait(), 5)  # 1 of 2 slots: saturation 0.5
            held = asyncio.create_task(client.post(url, json=body(1)))  # standard: held back at 0.5
            await asyncio.sleep(0.3)
            assert not held.done()
            t0 = time.monotonic()
            crit = asyncio.create_task(stream(client, url, critical, crit_started))
            await asyncio.wait_for(crit_started.wait(), 5)  # the reserved slot: no wait for a slot to free
            assert time.monotonic() - t0 < 2.0
            # Both slots busy (1.0): the next critical request evicts the standard stream.
            t1 = time.monotonic()
            r = await client.post(url, json=body(1), headers=critical)
            assert r.status_code == 200, r.text
            assert time.monotonic() - t1 < 3.0
            assert await asyncio.wait_for(std, 5) in ("RemoteProtocolError", "ReadError")
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="EvictedInFlight", priority="0") == 1.0
            # The held-back standard request never got under its ceiling: TTL 429.
            late = await held
            assert late.status_code == 429 and late.json()["error"]["code"] == "flow_control_ttl_expired"
            crit.cancel()
    asyncio.run(scenario())


NO_ENDPOINT_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: ["flowControl=true"]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 4}
- type: queue-scorer
- type: max-score-picker
flowControl:
  saturationDetector: {pluginRef: concurrency-detector}
  defaultRequestTTL: 20s
  noEndpointRequestTTL: 1500ms
"""


def test_no_endpoint_request_ttl_waits_for_a_pod_and_then_answers_503(stack_factory: StackFactory,
                                                                      tmp_path: Path) -> None:
    """llm-d-router's noEndpointRequestTTL: with no healthy endpoint a request waits in the EPP
    up to that budget (not defaultRequestTTL) and then gets 503 with an OpenAI error body; a
    pod coming back within the budget serves the waiting request."""
    path = tmp_path / "epp-config.yaml"
    path.write_text(NO_ENDPOINT_CONFIG)
    stack = stack_factory(pods=1, time_scale=0.5, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000)
    # The pod is frozen (SIGSTOP), not stopped: its scrapes time out and the EPP marks it
    # unhealthy; SIGCONT brings it back within milliseconds (a restart takes longer than the
    # budget this test can afford).
    pgid = stack.procs[stack.pods[0].name].pid

    async def ready_pods(client: httpx.AsyncClient) -> float:
        return await metric(client, stack, "inference_pool_ready_pods")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            assert (await client.post(url, json=body(1))).status_code == 200
            os.killpg(pgid, signal.SIGSTOP)
            await until(lambda: _eq(ready_pods(client), 0.0))
            # 1. Nobody comes back: 503 after the 1.5 s no-endpoint budget.
            t0 = time.monotonic()
            r = await client.post(url, json=body(1))
            waited = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert 1.4 <= waited < 5.0, waited
            assert r.headers["retry-after"] == "1"
            assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"
            error = r.json()["error"]
            assert error["code"] == "flow_control_no_endpoints" and "no healthy endpoint" in error["message"]
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="EvictedNoEndpoints") == 1.0
            # 2. The pod comes back within the budget: the waiting request is served.
            waiting = asyncio.create_task(client.post(url, json=body(1)))
            await until(lambda: _eq(metric(client, stack, "inference_extension_flow_control_queue_size"), 1.0))
            os.killpg(pgid, signal.SIGCONT)
            r = await waiting
            assert r.status_code == 200, r.text
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="EvictedNoEndpoints") == 1.0
    try:
        asyncio.run(scenario())
    finally:
        os.killpg(pgid, signal.SIGCONT)


def test_eviction_with_response_bodies_of_evictable_requests_only(stack_factory: StackFactory,
                                                                   tmp_path: Path) -> None:
    """Envoy's response body mode NONE with allow_mode_override: the EPP asks (mode_override on
    the response headers) for the bodies of the requests eviction may end, so a critical stream
    costs 3 ext_proc messages (request headers, body, response headers) whatever its length,
    while a sheddable stream sends its chunks to the EPP, which can still evict it."""
    path = tmp_path / "epp-config.yaml"
    path.write_text(EVICTION_CONFIG)
    stack = stack_factory(pods=1, time_scale=1.0, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000, response_body_mode="NONE",
                          response_header_mode="SEND", mode_overrides=True)
    critical = {"x-gateway-inference-objective": "llama3-8b-instruct"}

    def sent() -> int:
        stats = httpx.get(f"http://127.0.0.1:{stack.cfg.admin_port}/stats?filter=ext_proc.stream_msgs_sent",
                          timeout=5).text
        return sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if "stream_msgs_sent" in line)

    async def stream(client: httpx.AsyncClient, url: str, headers: dict[str, str], max_tokens: int) -> str:
        done = False
        try:
            async with client.stream("POST", url, json={**body(max_tokens), "stream": True}, headers=headers) as r:
                async for line in r.aiter_lines():
                    done = done or line.strip() == "data: [DONE]"
        except httpx.HTTPError as e:  # Envoy resets the evicted stream
            return type(e).__name__
        return "completed" if done else "truncated"

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            before = sent()
            assert await stream(client, url, critical, 20) == "completed"
            assert sent() - before == 3  # no response body message for a critical stream
            before = sent()
            assert await stream(client, url, {"x-gateway-inference-objective": "batch-sheddable"}, 20) == "completed"
            assert sent() - before > 3 + 10  # ... but every chunk of a sheddable one
            # Eviction still works: a critical request past its 500 ms TTL ends the sheddable stream.
            shed = asyncio.create_task(stream(client, url, {"x-gateway-inference-objective": "batch-sheddable"},
                                              1000))
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            r = await client.post(url, json=body(1), headers=critical)
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < 3.0
            assert await asyncio.wait_for(shed, 5) in ("RemoteProtocolError", "ReadError", "truncated")
            assert await metric(client, stack, "inference_extension_flow_control_requests_total",
                                outcome="EvictedInFlight") == 1.0
    asyncio.run(scenario())


PRIORITY_TO_PODS_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 8}
- type: queue-scorer
- type: max-score-picker
saturationDetector: {pluginRef: concurrency-detector}
flowControl:
  forwardPriorityToPods: true
"""


def test_forward_priority_to_pods_reaches_a_fcfs_pod_as_vllm_priority(stack_factory: StackFactory,
                                                                       tmp_path: Path) -> None:
    """forwardPriorityToPods through Envoy: the pod sees vLLM's `priority` = -(objective
    priority). A FCFS pod (vLLM's default) answers 400 to a non-zero priority naming the value
    it received, which shows what Envoy forwarded; a client's own `priority` is overwritten."""
    path = tmp_path / "epp-config.yaml"
    path.write_text(PRIORITY_TO_PODS_CONFIG)
    stack = stack_factory(pods=1, time_scale=0.2, kv_events=False, epp_config=path)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            r = await client.post(url, json=body(2), headers={"x-gateway-inference-objective": "llama3-8b-instruct"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == "Got priority -1 but Priority scheduling is not enabled."
            r = await client.post(url, json={**body(2), "priority": 7})  # standard: overwritten with 0
            assert r.status_code == 200, r.text
    asyncio.run(scenario())


def test_forward_priority_to_pods_orders_a_priority_pods_queue(stack_factory: StackFactory,
                                                               tmp_path: Path) -> None:
    """A pod with --scheduling-policy priority and one batch slot, the EPP letting requests
    through (concurrency limit 8): requests queue in the pod, and the critical one sent last
    runs before the sheddable one sent first, even though the sheddable client asked for
    vLLM priority -100 (the EPP writes the objective's instead)."""
    path = tmp_path / "epp-config.yaml"
    path.write_text(PRIORITY_TO_PODS_CONFIG)
    stack = stack_factory(pods=1, time_scale=0.2, kv_events=False, epp_config=path,
                          sim_args=["--max-num-seqs", "1", "--scheduling-policy", "priority"])

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{stack.url}/v1/completions"
            done: list[str] = []

            async def send(name: str, objective: str, payload: dict[str, object]) -> None:
                headers = {"x-gateway-inference-objective": objective} if objective else {}
                r = await client.post(url, json=payload, headers=headers)
                assert r.status_code == 200, (name, r.text)
                done.append(name)

            busy = asyncio.create_task(send("busy", "", body(300)))
            await until(lambda: _pod_gauge(client, stack, "vllm:num_requests_running", 1.0))
            shed = asyncio.create_task(send("sheddable", "batch-sheddable", {**body(2), "priority": -100}))
            await until(lambda: _pod_gauge(client, stack, "vllm:num_requests_waiting", 1.0))
            crit = asyncio.create_task(send("critical", "llama3-8b-instruct", body(2)))
            await until(lambda: _pod_gauge(client, stack, "vllm:num_requests_waiting", 2.0))
            await asyncio.gather(busy, shed, crit)
            assert done == ["busy", "critical", "sheddable"]
    asyncio.run(scenario())


async def _pod_gauge(client: httpx.AsyncClient, stack: LocalStack, name: str, value: float) -> bool:
    text = (await client.get(stack.pod_url(stack.pods[0]) + "/metrics")).text
    return any(line.startswith(name + "{") and float(line.rsplit(" ", 1)[1]) == value for line in text.splitlines())
