"""The in-flight ledger's prefill charge through the real handler and the embedded default
config: a request whose prefix the pod already holds adds only its uncached tail."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.datastore.inflight import CHARACTERS_PER_TOKEN, SERVICE_KEY, InflightTracker
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


async def _send(handler: ExtProcHandler, prompt: str) -> None:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": "POST", ":path": "/v1/completions", "x-request-id": "r"}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 8}).encode()

    async def stream() -> AsyncIterator[pb.ProcessingRequest]:
        yield pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm))
        yield pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))

    async for _ in handler.process(stream(), None):
        pass


async def test_a_prefix_hit_charges_only_the_uncached_prompt() -> None:
    ds = Datastore()
    pod = ds.upsert_endpoint(Endpoint(name="p0", address="127.0.0.1", port=8000))
    clock = Clock()  # frozen: nothing fades between the requests
    tracker = InflightTracker(ds, clock=clock)
    scheduler = load_scheduler_config(None, PluginContext(ds, services={SERVICE_KEY: tracker})).scheduler
    handler = ExtProcHandler(ds, lambda: scheduler, tracker=tracker)
    rng = random.Random(7)
    shared = " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(1_000))  # ~5.4k chars
    tail = " and now a new question about something else entirely"

    await _send(handler, shared)
    first = tracker.recent_prompt_tokens_of([pod], clock.now)[0]
    assert first == len(shared) // CHARACTERS_PER_TOKEN  # nothing was cached: the whole prompt

    await _send(handler, shared + tail)
    added = tracker.recent_prompt_tokens_of([pod], clock.now)[0] - first
    # The default prefix scorer matches whole 64-byte blocks: the hit leaves at most the
    # shared prompt's last partial block plus the tail uncached.
    full = len(shared + tail) // CHARACTERS_PER_TOKEN
    assert 0 < added <= (64 + len(tail)) // CHARACTERS_PER_TOKEN + 1
    assert added < full / 10
