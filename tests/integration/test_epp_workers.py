"""`epp serve --workers 2`: two EPP processes on one port, sharing what they learn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers.metrics import text_samples
from tests.integration.conftest import StackFactory
from tests.integration.test_envoy_latency import CONFIG as LATENCY_CONFIG

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _per_worker(metrics_text: str, name: str, **labels: str) -> dict[str, float]:
    """The sum of sample `name` (with `labels`) by the merged /metrics' worker label."""
    out: dict[str, float] = {}
    for (sample, sample_labels), value in text_samples(metrics_text).items():
        found = dict(sample_labels)
        if sample == name and "worker" in found and all(found.get(k) == v for k, v in labels.items()):
            out[found["worker"]] = out.get(found["worker"], 0.0) + value
    return out


def _decisions(metrics_text: str) -> list[float]:
    """Scheduling decisions of worker 0 and worker 1."""
    per = _per_worker(metrics_text, "scheduler_requests_total")
    return [per.get(worker, 0.0) for worker in ("0", "1")]


def _scrape_until(url: str, done: Callable[[str], bool], timeout: float = 10.0) -> str:
    """/metrics of worker 0, scraped until `done` holds or `timeout` passes; the last text.
    Worker 0 fetches worker 1's metrics on each scrape (1 s timeout), and worker 1 announces
    its metrics port every second: on a loaded machine a scrape may miss them."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url, timeout=5).text
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_two_workers_share_prefix_affinity(stack_factory: StackFactory) -> None:
    # Real-time pods and 16 tokens: each request holds its ext_proc stream for a few hundred
    # ms, so a wave of 48 needs about 24 Envoy->EPP connections, whatever the machine's load
    # (faster requests left Envoy one or two connections, on one worker, on a loaded machine).
    stack = stack_factory(pods=3, time_scale=1.0, kv_events=False, access_log=True,
                          epp_args=["--workers", "2"],
                          # Many Envoy->EPP connections, so the kernel surely spreads them over both workers.
                          epp_max_concurrent_streams=2)
    prefixes = [f"System prompt of tenant {t}. " * 60 for t in range(3)]

    async def scenario() -> dict[int, set[str]]:
        served: dict[int, set[str]] = {t: set() for t in range(3)}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            async def one(t: int, i: int) -> None:
                r = await client.post(f"{stack.url}/v1/completions", json={
                    "model": MODEL, "prompt": prefixes[t] + f" question {i}", "max_tokens": 16})
                assert r.status_code == 200, f"{r.status_code} {r.text}\n{stack.tail('envoy')}\n{stack.tail('epp')}"
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
    # One /metrics for both workers, each series labelled with its worker.
    text = _scrape_until(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics",
                         lambda t: all(c > 0 for c in _decisions(t)) and sum(_decisions(t)) == 3 + 4 * 48)
    counts = _decisions(text)
    assert all(c > 0 for c in counts), (f"both workers should have decided: {counts}\n"
                                        f"{text[:2000]}\n{stack.tail('epp')}")
    assert sum(counts) == 3 + 4 * 48


def _samples(metrics_text: str) -> list[float]:
    """epp_latency_model_samples of TTFT and TPOT, of worker 0 and worker 1."""
    out = []
    for kind in ("ttft", "tpot"):
        per = _per_worker(metrics_text, "epp_latency_model_samples", type=kind)
        out += [per.get(worker, 0.0) for worker in ("0", "1")]
    return out


def _dropped(metrics_text: str) -> dict[str, float]:
    """epp_peer_messages_dropped_total by worker."""
    return _per_worker(metrics_text, "epp_peer_messages_dropped_total")


def test_two_workers_learn_from_each_others_requests(stack_factory: StackFactory,
                                                      tmp_path: Path) -> None:
    """Predicted-latency routing with two workers: each worker queues and learns from the
    other's requests too (epp/latency/sharing.py), so each has every request's TTFT and TPOT."""
    config = tmp_path / "latency.yaml"
    config.write_text(LATENCY_CONFIG)
    stack = stack_factory(pods=2, time_scale=1.0, kv_events=False, epp_config=config,
                          response_body_mode="STREAMED", epp_args=["--workers", "2"],
                          epp_max_concurrent_streams=2)
    sent = 48

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
            async def one(i: int) -> None:
                body = {"model": MODEL, "prompt": f"request {i} " + "lorem ipsum " * (20 + 10 * (i % 5)),
                        "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", f"{stack.url}/v1/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    assert r.status_code == 200, f"{r.status_code}\n{stack.tail('epp')}"

            # 24 at once: Envoy opens 12 connections (2 streams each), which the kernel spreads
            # over both workers (with 6, all landed on one worker in 1 of 30 runs).
            for wave in range(2):
                await asyncio.gather(*(one(wave * 24 + j) for j in range(24)))

    url = f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics"
    dropped_before = _dropped(_scrape_until(url, lambda t: set(_dropped(t)) == {"0", "1"}))
    assert set(dropped_before) == {"0", "1"}, f"worker 1's metrics never reached worker 0: {dropped_before}"
    asyncio.run(scenario())
    text = _scrape_until(url, lambda t: _samples(t) == [sent] * 4)
    samples = _samples(text)
    counts = _decisions(text)
    assert all(c > 0 for c in counts) and sum(counts) == sent, counts
    # Each worker trained on all 48 requests, not only on those it routed.
    assert samples == [sent] * 4, samples
    # Nothing was lost on the peer bus while the requests ran (a worker's first messages may
    # go before the other has bound its socket).
    assert _dropped(text) == dropped_before, (dropped_before, _dropped(text))
