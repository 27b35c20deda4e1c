"""Routing through the real Envoy binary, the EPP and simulated vLLM pods."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> LocalStack:
    # Small batches so a queue builds quickly; 10x faster than real time.
    return stack_factory(pods=3, time_scale=0.1, sim_args=["--max-num-seqs", "4"])


def _pod_ports(stack: LocalStack) -> dict[str, int]:
    return {p.name: p.serving_port for p in stack.pods}


def _completion(client: httpx.Client, stack: LocalStack, prompt: str, **extra: object) -> httpx.Response:
    return client.post(f"{stack.url}/v1/completions",
                       json={"model": MODEL, "prompt": prompt, "max_tokens": 4, **extra})


def test_requests_land_on_the_pod_the_epp_picked(stack: LocalStack) -> None:
    ports = _pod_ports(stack)
    seen = set()
    with httpx.Client(timeout=20) as client:
        for i in range(12):
            r = _completion(client, stack, f"request number {i} " + "lorem ipsum " * (i + 1))
            assert r.status_code == 200, r.text
            served_by = r.headers["x-sim-pod"]
            upstream = r.headers["x-gateway-destination-endpoint-served"]
            # The pod that answered is the one behind the endpoint Envoy connected to, which is
            # the one the EPP put in x-gateway-destination-endpoint (ORIGINAL_DST on that header).
            assert upstream == f"127.0.0.1:{ports[served_by]}"
            seen.add(served_by)
    assert len(seen) >= 2, "distinct prompts on idle pods should spread"


def test_repeated_prompt_sticks_to_the_pod_with_its_prefix(stack: LocalStack) -> None:
    prefix = "You are a meticulous assistant. " * 40
    with httpx.Client(timeout=20) as client:
        pods = [_completion(client, stack, prefix + f" Question {i}?").headers["x-sim-pod"] for i in range(6)]
    assert len(set(pods)) == 1, pods


async def _load_pod(port: int, n: int) -> list[asyncio.Task[httpx.Response]]:
    client = httpx.AsyncClient(timeout=120)
    body = {"model": MODEL, "prompt": "busy " * 200, "max_tokens": 400}
    return [asyncio.create_task(client.post(f"http://127.0.0.1:{port}/v1/completions", json=body))
            for _ in range(n)]


def test_loaded_pod_is_avoided(stack_factory: StackFactory) -> None:
    # Its own stack, whose pod 0 runs 10x slower: 16 requests of 400 tokens then keep it busy
    # for ~11 s at ~150 engine steps/s. On the shared pods they drained in ~1 s (the test then
    # sent its requests to an idle pod), and 4,000-token requests kept it busy as long but at
    # ~1,500 steps/s, a core of CPU that starved the rest of the stack on a 2-core CI machine.
    stack = stack_factory(pods=3, time_scale=0.1, sim_args=["--max-num-seqs", "4"],
                          pod_sim_args={0: ["--slowdown", "10"]})
    busy = stack.pods[0]

    async def scenario() -> list[str]:
        tasks = await _load_pod(busy.port, 16)  # 4 running + 12 waiting on the busy pod
        try:
            async with httpx.AsyncClient(timeout=20) as client:
                # Wait until the EPP itself has scraped the queue (its per-pod gauge), not just until
                # the pod shows it: a pod the EPP sends nothing to is scraped at the idle interval
                # (0.5 s), later still on a loaded machine.
                deadline = time.monotonic() + 20
                epp_metrics = f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics"
                seen = 0.0
                while time.monotonic() < deadline:
                    text = (await client.get(epp_metrics)).text
                    for ln in text.splitlines():
                        if (ln.startswith("inference_pool_per_pod_queue_size{")
                                and f'model_server_pod="{busy.name}"' in ln):
                            seen = float(ln.split()[-1])
                    if seen >= 8:
                        break
                    await asyncio.sleep(0.05)
                assert seen >= 8, f"the EPP never saw the busy pod's queue (last {seen})"
                served = []
                for i in range(10):
                    r = await client.post(f"{stack.url}/v1/completions",
                                          json={"model": MODEL, "prompt": f"fresh {i} " * 20, "max_tokens": 2})
                    assert r.status_code == 200, r.text
                    served.append(r.headers["x-sim-pod"])
                # The assertion below means something only if the pod was still loaded.
                page = (await client.get(f"http://127.0.0.1:{busy.port}/metrics")).text
                waiting = sum(float(ln.split()[-1]) for ln in page.splitlines()
                              if ln.startswith("vllm:num_requests_waiting{"))
                assert waiting > 0, "the busy pod drained before the test finished; load it longer"
                return served
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    served = asyncio.run(scenario())
    assert busy.name not in served, served


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"prompt": "hi"}).encode(), 400, "missing_model"),
    (json.dumps({"model": "no-such-model", "prompt": "hi"}).encode(), 404, "model_not_found"),
])
def test_bad_requests_get_openai_errors(stack: LocalStack, body: bytes, status: int, code: str) -> None:
    r = httpx.post(f"{stack.url}/v1/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code


def test_oversize_body_is_413_with_json_error(stack: LocalStack) -> None:
    huge = json.dumps({"model": MODEL, "prompt": "x" * (5 * 1024 * 1024)}).encode()
    r = httpx.post(f"{stack.url}/v1/completions", content=huge,
                   headers={"content-type": "application/json"}, timeout=20)
    assert r.status_code == 413
    assert "error" in r.json()


def test_lora_adapter_is_served(stack: LocalStack) -> None:
    r = httpx.post(f"{stack.url}/v1/completions",
                   json={"model": "sql-lora", "prompt": "select", "max_tokens": 2}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "sql-lora"


def test_streaming_with_the_openai_client(stack: LocalStack) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=20)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 12
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert completion.choices[0].text


def test_epp_metrics_count_requests(stack: LocalStack) -> None:
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=5).text
    assert "inference_objective_request_total" in text
    assert "scheduler_decision_duration_seconds_bucket" in text
    assert "inference_pool_ready_pods" in text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("inference_objective_request_total{") and MODEL in ln)
    assert float(line.split()[-1]) > 0


def test_grpc_health_on_the_ext_proc_port(stack: LocalStack) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ready = httpx.get(f"http://127.0.0.1:{stack.cfg.health_port}/readyz", timeout=5)
    assert ready.status_code == 200
    assert httpx.get(f"http://127.0.0.1:{stack.cfg.health_port}/healthz", timeout=5).status_code == 200
