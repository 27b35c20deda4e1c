"""`epp serve --workers 2`: two EPP processes on one port, sharing what they learn."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _decisions(metrics_text: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics_text.splitlines()
               if line.startswith("scheduler_requests_total{"))


def test_two_workers_share_prefix_affinity(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=3, time_scale=0.05, kv_events=False, epp_args=["--workers", "2"])
    prefixes = [f"System prompt of tenant {t}. " * 60 for t in range(3)]

    async def scenario() -> dict[int, set[str]]:
        served: dict[int, set[str]] = {t: set() for t in range(3)}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            async def one(t: int, i: int) -> None:
                r = await client.post(f"{stack.url}/v1/completions", json={
                    "model": MODEL, "prompt": prefixes[t] + f" question {i}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                served[t].add(r.headers["x-sim-pod"])

            for t in range(3):  # each tenant's first request teaches one worker where it went
                await one(t, -1)
            await asyncio.sleep(0.2)
            for _ in range(4):  # concurrent waves: Envoy opens several connections to the EPP
                await asyncio.gather(*(one(t, i) for t in range(3) for i in range(16)))
        return served

    served = asyncio.run(scenario())
    # Every tenant stayed on one pod although its requests went through both workers.
    assert all(len(pods) == 1 for pods in served.values()), served
    m = stack.cfg.metrics_port
    counts = [_decisions(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text) for port in (m, m + 1)]
    assert all(c > 0 for c in counts), f"both workers should have decided: {counts}"
