"""Two models behind one real Envoy: the body-based router, two pools with their own EPPs.

Pool a: simulated vLLM pods (model A and its LoRA adapters); pool b: simulated SGLang pods
(model B) whose EPP scores them from SGLang's metric names. Every request goes through the
real Envoy binary; the expectations come from the pods themselves (their /v1/models, the
x-sim-pod header, the usage they report), not from the gateway's code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.localstack.multipool import SGLANG_MODEL, MultiPoolStack, MultiStackConfig, PoolPlan
from epp.localstack.stack import DEFAULT_LORAS, DEFAULT_MODEL, LocalStack

pytestmark = pytest.mark.integration

# Only the queue scorer: which SGLang pod wins depends on sglang:num_queue_reqs alone.
QUEUE_ONLY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""
ENGINE_LABEL = "epp.llm-d.ai/engine"
MIXED_MODEL = "mixed/model-c"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiPoolStack]:
    run_dir = Path(tmp_path_factory.mktemp("models"))
    (run_dir / "queue-only.yaml").write_text(QUEUE_ONLY)
    pools = [
        PoolPlan("a", "vllm", DEFAULT_MODEL, DEFAULT_LORAS, pods=1),
        # One sequence at a time: a queue builds on an SGLang pod with a few direct requests.
        PoolPlan("b", "sglang", SGLANG_MODEL, (), pods=2, epp_config=run_dir / "queue-only.yaml",
                 sim_args=["--max-num-seqs", "1"]),
        # A pool mixing engines: pod 0 vLLM, pod 1 SGLang; the label tells the EPP which is which.
        PoolPlan("c", "vllm", MIXED_MODEL, (), pods=2, epp_config=run_dir / "queue-only.yaml",
                 sim_args=["--max-num-seqs", "1"], pod_sim_args={1: ["--engine", "sglang"]},
                 pod_labels={0: {ENGINE_LABEL: "vllm"}, 1: {ENGINE_LABEL: "sglang"}},
                 epp_args=["--engine-label", ENGINE_LABEL]),
    ]
    stack = MultiPoolStack(MultiStackConfig(pools=pools, run_dir=run_dir, ports_free=True, time_scale=0.1,
                                            supervise=True))
    stack.start(timeout=60)
    try:
        yield stack
    finally:
        stack.stop()


def _pods(stack: LocalStack) -> dict[str, str]:
    """pod name -> host:port"""
    return {p.name: f"127.0.0.1:{p.serving_port}" for p in stack.pods}


def test_each_model_reaches_its_own_pool(gateway: MultiPoolStack) -> None:
    pool_a, pool_b = _pods(gateway.pools["a"]), _pods(gateway.pools["b"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for model, pool in ((DEFAULT_MODEL, pool_a), ("sql-lora", pool_a), (SGLANG_MODEL, pool_b)):
            for i in range(4):
                r = client.post("/v1/completions", json={"model": model, "prompt": f"hello {i}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                assert r.json()["model"] == model
                pod = r.headers["x-sim-pod"]
                assert pod in pool, f"{model} served by {pod}, not by its pool {sorted(pool)}"
                assert r.headers["x-gateway-destination-endpoint-served"] == pool[pod]
    # Each pool's own EPP made the decisions for its models, and only for those.
    for name, mine in (("a", {DEFAULT_MODEL, "sql-lora"}), ("b", {SGLANG_MODEL})):
        page = httpx.get(f"http://127.0.0.1:{gateway.pools[name].cfg.metrics_port}/metrics").text
        decided = {s.labels["model_name"] for f in text_string_to_metric_families(page)
                   if f.name == "inference_objective_request" for s in f.samples
                   if s.name.endswith("_total") and s.value > 0}
        assert decided == mine, (name, decided)
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        # A client naming another pool in the routing header does not move its request.
        r = client.post("/v1/completions", headers={"x-gateway-model-name": SGLANG_MODEL},
                        json={"model": DEFAULT_MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.headers["x-sim-pod"] in pool_a


def test_models_list_is_aggregated_once_with_owned_by(gateway: MultiPoolStack) -> None:
    expected: dict[str, set[str]] = {}
    for stack in gateway.pools.values():
        for hostport in _pods(stack).values():  # the pods' own lists are the reference
            for card in httpx.get(f"http://{hostport}/v1/models").json()["data"]:
                expected.setdefault(card["id"], set()).add(card["owned_by"])
    r = httpx.get(f"{gateway.url}/v1/models")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list" and len(ids) == len(set(ids)), ids
    listed = {m["id"]: m["owned_by"] for m in body["data"]}
    assert set(listed) == set(expected) and all(listed[m] in expected[m] for m in listed)
    assert listed[SGLANG_MODEL] == "sglang" and listed[DEFAULT_MODEL] == "vllm"
    assert expected[MIXED_MODEL] == {"vllm", "sglang"}  # a mixed pool: one of its engines
    one = httpx.get(f"{gateway.url}/v1/models/sql-lora")
    assert one.status_code == 200 and one.json()["owned_by"] == "vllm"


def test_unknown_and_missing_model_answered_by_the_gateway(gateway: MultiPoolStack) -> None:
    pods = [hp for stack in gateway.pools.values() for hp in _pods(stack).values()]
    before = [httpx.get(f"http://{hp}/sim/state").json()["total_requests"] for hp in pods]
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        r = client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "x-sim-pod" not in r.headers
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and "no-such-model" in err["message"]
        r = client.post("/v1/completions", json={"prompt": "no model"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
        assert client.get("/v1/models/no-such-model").status_code == 404
    after = [httpx.get(f"http://{hp}/sim/state").json()["total_requests"] for hp in pods]
    assert after == before, "no pod may see a request the gateway refused"


async def test_sglang_pods_scored_from_their_own_queue_metric(gateway: MultiPoolStack) -> None:
    pool = gateway.pools["b"]
    busy, idle = pool.pods[0], pool.pods[1]
    long = {"model": SGLANG_MODEL, "prompt": "a long story " * 10, "max_tokens": 2000}
    async with httpx.AsyncClient(timeout=30) as client:
        # Load the busy pod behind the gateway's back: only its /metrics can tell the EPP.
        direct = [asyncio.create_task(client.post(f"http://127.0.0.1:{busy.port}/v1/completions", json=long))
                  for _ in range(4)]
        try:
            for _ in range(100):
                page = (await client.get(f"http://127.0.0.1:{busy.port}/metrics")).text
                queue = {f.name: f.samples[0].value for f in text_string_to_metric_families(page)
                         }.get("sglang:num_queue_reqs", 0)
                if queue >= 2:
                    break
                await asyncio.sleep(0.05)
            assert queue >= 2
            await asyncio.sleep(1.0)  # the EPP's idle scrape interval is at most 0.5 s
            for i in range(8):  # a blind pick would land all 8 on one pod with p = 1/256
                r = await client.post(f"{gateway.url}/v1/completions",
                                      json={"model": SGLANG_MODEL, "prompt": f"quick {i}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                assert r.headers["x-sim-pod"] == idle.name, "the queue scorer must avoid the queued SGLang pod"
        finally:
            for t in direct:
                t.cancel()
            await asyncio.gather(*direct, return_exceptions=True)


def _usage_samples(stack: LocalStack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    page = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(page) if f.name.startswith("epp_usage_")
            for s in f.samples if s.name.endswith("_total")}


def _counter(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_usage_metrics_per_model_streaming_included(gateway: MultiPoolStack) -> None:
    # Pool a has one pod, so the repeated prompt meets its cached blocks.
    stack = gateway.pools["a"]
    before = _usage_samples(stack)
    prompt_sum = completion_sum = cached_sum = 0
    prompt = "a shared system prompt that repeats " * 12
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for _ in range(2):
            r = client.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": 3})
            usage = r.json()["usage"]
            prompt_sum += usage["prompt_tokens"]
            completion_sum += usage["completion_tokens"]
            cached_sum += usage["prompt_tokens_details"]["cached_tokens"]
        # Streaming without include_usage: the EPP asks the pod for the usage chunk.
        with client.stream("POST", "/v1/chat/completions", json={
                "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        usage = events[-1]["usage"]
        prompt_sum += usage["prompt_tokens"]
        completion_sum += usage["completion_tokens"]
        cached_sum += usage["prompt_tokens_details"]["cached_tokens"]
    labels = {"model_name": DEFAULT_MODEL, "target_model_name": DEFAULT_MODEL, "tenant": ""}
    after = before
    for _ in range(50):  # the EPP records when Envoy closes the stream, just after the client got it
        after = _usage_samples(stack)
        if _counter(after, "epp_usage_responses_total", usage="reported", **labels) - _counter(
                before, "epp_usage_responses_total", usage="reported", **labels) >= 3:
            break
        time.sleep(0.05)
    for name, expected in (("epp_usage_prompt_tokens_total", prompt_sum),
                           ("epp_usage_completion_tokens_total", completion_sum),
                           ("epp_usage_cached_prompt_tokens_total", cached_sum)):
        assert _counter(after, name, **labels) - _counter(before, name, **labels) == expected, name
    assert cached_sum > 0, "the repeated prompt should hit a pod's prefix cache"
    assert _counter(after, "epp_usage_responses_total", usage="missing", **labels) == _counter(
        before, "epp_usage_responses_total", usage="missing", **labels)


async def test_a_pool_mixing_engines(gateway: MultiPoolStack) -> None:
    """Pool c: pod 0 is vLLM, pod 1 SGLang; the engine label picks each pod's metric names,
    so whichever pod is queued (by direct requests only its /metrics show) is avoided."""
    stack = gateway.pools["c"]
    vllm_pod, sglang_pod = stack.pods
    async with httpx.AsyncClient(timeout=30) as client:
        assert "sglang:num_queue_reqs" in (await client.get(f"http://127.0.0.1:{sglang_pod.port}/metrics")).text
        long = {"model": MIXED_MODEL, "prompt": "a long story " * 10, "max_tokens": 2000}
        for busy, idle in ((sglang_pod, vllm_pod), (vllm_pod, sglang_pod)):
            direct = [asyncio.create_task(client.post(f"http://127.0.0.1:{busy.port}/v1/completions", json=long))
                      for _ in range(3)]
            try:
                for _ in range(100):
                    if (await client.get(f"http://127.0.0.1:{busy.port}/sim/state")).json()["waiting"] >= 2:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # the EPP's idle scrape interval is at most 0.5 s
                for i in range(6):
                    r = await client.post(f"{gateway.url}/v1/completions",
                                          json={"model": MIXED_MODEL, "prompt": f"q {i}", "max_tokens": 2})
                    assert r.status_code == 200 and r.headers["x-sim-pod"] == idle.name, (busy.name, r.text)
            finally:
                for t in direct:
                    t.cancel()
                await asyncio.gather(*direct, return_exceptions=True)
            for _ in range(100):  # the aborted requests leave the busy pod's queue
                if (await client.get(f"http://127.0.0.1:{busy.port}/sim/state")).json()["waiting"] == 0:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.6)


def test_router_down_means_503_not_a_wrong_pool_then_it_is_restarted(gateway: MultiPoolStack) -> None:
    """Runs last: kills the body-based router. Without it no request may reach a pool (the
    bbr filter is failure_mode_allow: false); the stack's supervisor brings it back."""
    body = {"model": SGLANG_MODEL, "prompt": "hi", "max_tokens": 2}
    proc = gateway.procs["bbr"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 503 and "x-sim-pod" not in r.headers, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.post("/v1/completions", json=body)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and r.headers["x-sim-pod"] in _pods(gateway.pools["b"])
    assert [name for _, name, _, _ in gateway.restarts] == ["bbr"]
