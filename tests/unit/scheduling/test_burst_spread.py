"""A burst between two scrapes must spread over equal pods, not herd onto the idlest-looking one.

The requests of the burst go through the real ext_proc handler with the embedded default
config; their streams stay open (responses not finished) and no scrape happens, so the only
signal that moves is the EPP's in-flight ledger.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.datastore.inflight import SERVICE_KEY, InflightTracker
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler

PODS = 4
BURST = 40


def _messages(i: int, prompt: str) -> list[pb.ProcessingRequest]:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": "POST", ":path": "/v1/completions", "x-request-id": f"r{i}"}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 16}).encode()
    return [pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm)),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))]


async def _burst(config: str | None, prompts: list[str]) -> tuple[Counter[str], list[Endpoint]]:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"p{i}", address="127.0.0.1", port=8000 + i)) for i in range(PODS)]
    tracker = InflightTracker(ds)
    ctx = PluginContext(ds, services={SERVICE_KEY: tracker})
    scheduler = load_scheduler_config(config, ctx).scheduler
    handler = ExtProcHandler(ds, lambda: scheduler, tracker=tracker)
    release = asyncio.Event()
    picked: Counter[str] = Counter()

    async def one(i: int) -> None:
        async def stream() -> AsyncIterator[pb.ProcessingRequest]:
            for msg in _messages(i, prompts[i]):
                yield msg
            await release.wait()  # the response is still running

        async for raw in handler.process(stream(), None):
            resp = pb.ProcessingResponse()
            resp.ParseFromString(raw)
            if resp.WhichOneof("response") == "request_body":
                for h in resp.request_body.response.header_mutation.set_headers:
                    if h.header.key == "x-gateway-destination-endpoint":
                        picked[h.header.raw_value.decode()] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(BURST)]
    while sum(picked.values()) < BURST:
        await asyncio.sleep(0.001)
    assert sum(ep.inflight for ep in eps) == BURST
    release.set()
    await asyncio.gather(*tasks)
    return picked, eps


async def test_burst_of_unrelated_requests_spreads_evenly() -> None:
    prompts = [f"request {i}: " + "lorem ipsum " * 40 for i in range(BURST)]
    picked, eps = await _burst(None, prompts)
    assert sorted(picked.values()) == [BURST // PODS] * PODS
    assert all(ep.inflight == 0 and ep.inflight_tokens == 0 for ep in eps)  # released at stream end


async def test_burst_of_one_shared_prefix_lets_go_of_the_busy_pod() -> None:
    # Affinity keeps the prefix's pod until it is more than balanceAbsThreshold (16) requests
    # ahead of the least loaded pod (and 1.5x), then lets go; the next pod to take the prefix
    # does the same. Without letting go (GIE's default) the whole burst lands on one pod.
    shared = "system: you are a helpful assistant. " * 40
    prompts = [shared + f"question {i}" for i in range(BURST)]
    picked, _ = await _burst(None, prompts)
    assert len(picked) >= 3
    assert max(picked.values()) == 17  # 17 - 0 > 16: the 18th request goes elsewhere
    gie, _ = await _burst("gie-default.yaml", prompts)
    assert list(gie.values()) == [BURST]
