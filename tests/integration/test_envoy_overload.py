"""Overload through the real Envoy: an overloaded EPP answers 503, a saturated pool sheds
sheddable requests with 429; both with OpenAI error bodies, and normal traffic still flows."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def test_overloaded_epp_answers_503_and_recovers(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=1, time_scale=0.5, kv_events=False, epp_args=["--max-inflight-requests", "2"])

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            # Two requests of ~2 s each fill the EPP's in-flight budget.
            long = [asyncio.create_task(client.post(f"{stack.url}/v1/completions", json={
                "model": MODEL, "prompt": "hold", "max_tokens": 600})) for _ in range(2)]
            await asyncio.sleep(0.3)  # both admitted and still generating
            r = await client.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "epp_overloaded"
            assert r.headers.get("retry-after") == "1"
            assert [r.status_code for r in await asyncio.gather(*long)] == [200, 200]
            r = await client.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
            assert r.status_code == 200  # capacity is back once they completed

    asyncio.run(scenario())


def test_saturated_pool_sheds_sheddable_requests(stack_factory: StackFactory) -> None:
    # Real-time simulator: the queue below lasts several seconds.
    stack = stack_factory(pods=1, time_scale=1.0, kv_events=False,
                          sim_args=["--max-num-seqs", "2"], epp_args=["--saturation-queue-depth", "2"])
    pod = stack.pods[0]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            # Load the pod directly: 2 running + 4 waiting.
            load = [asyncio.create_task(client.post(f"http://127.0.0.1:{pod.port}/v1/completions", json={
                "model": MODEL, "prompt": "busy", "max_tokens": 400})) for _ in range(6)]
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # until the pod reports its queue
                    text = (await client.get(f"http://127.0.0.1:{pod.port}/metrics")).text
                    waiting = [ln for ln in text.splitlines() if ln.startswith("vllm:num_requests_waiting")]
                    if waiting and float(waiting[0].split()[-1]) >= 2:
                        break
                    await asyncio.sleep(0.05)
                # Until the EPP's own scrape has seen that queue: an idle pod is scraped on the
                # adaptive interval (up to 0.5 s), so a fixed sleep could ask before it did.
                epp_metrics = f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics"
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    text = (await client.get(epp_metrics)).text
                    seen = [ln for ln in text.splitlines() if ln.startswith("inference_pool_per_pod_queue_size")]
                    if seen and max(float(ln.split()[-1]) for ln in seen) >= 2:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"the EPP never saw the pod's queue:\n{text}")
                r = await client.post(f"{stack.url}/v1/completions",
                                      headers={"x-gateway-inference-objective": "batch-sheddable"},
                                      json={"model": MODEL, "prompt": "x", "max_tokens": 1})
                assert r.status_code == 429, r.text
                assert r.json()["error"]["code"] == "inference_pool_saturated"
                # A request of a normal objective still goes through.
                # (Streamed, so the answer's status is known without waiting behind the queue.)
                async with client.stream("POST", f"{stack.url}/v1/completions",
                                         headers={"x-gateway-inference-objective": "llama3-8b-instruct"},
                                         json={"model": MODEL, "prompt": "x", "max_tokens": 1,
                                               "stream": True}) as resp:
                    assert resp.status_code == 200
            finally:
                for t in load:
                    t.cancel()
                await asyncio.gather(*load, return_exceptions=True)

    asyncio.run(scenario())
