"""The decision bus: nothing built while nobody listens, bounded and non-blocking when
somebody does, and the ext_proc handler publishes the committed pick."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.config.loader import parse_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.observability.decisions import DecisionBus, DecisionEvent
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler

CONFIG = """
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
"""


def _event(i: int = 0) -> DecisionEvent:
    return DecisionEvent(time=0.0, request_id=f"r{i}", model="m", target_model="m", objective=None,
                         priority=0, path="/v1/completions", stream=False, max_tokens=8, prompt_chars=3,
                         prompt_tokens=None, prefix_hashes=[], prefix_block_size=0, primary_profile="default",
                         picks={"default": "10.0.0.1:8000"}, fallbacks=[], scores={}, decision_s=0.0,
                         prompt="abc")


def test_idle_bus_is_inactive_and_full_subscription_drops_and_counts() -> None:
    bus = DecisionBus()
    assert not bus.active
    sub = bus.subscribe(maxsize=2)
    assert bus.active
    for i in range(5):
        bus.publish(_event(i))
    assert [e.request_id for e in sub.drain()] == ["r0", "r1"]
    assert sub.dropped == 3 and sub.delivered == 2
    bus.unsubscribe(sub)
    assert not bus.active


def test_prompts_only_reach_subscriptions_that_asked_and_sampling_keeps_every_nth() -> None:
    bus = DecisionBus()
    plain = bus.subscribe()
    with_text = bus.subscribe(with_prompts=True)
    sampled = bus.subscribe(sample=0.25)
    for i in range(8):
        bus.publish(_event(i))
    assert all(e.prompt is None for e in plain.drain())
    assert all(e.prompt == "abc" for e in with_text.drain())
    assert [e.request_id for e in sampled.drain()] == ["r3", "r7"]


async def test_get_waits_for_the_next_event() -> None:
    bus = DecisionBus()
    sub = bus.subscribe()
    waiter = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish(_event(7))
    assert (await asyncio.wait_for(waiter, 1.0)).request_id == "r7"


async def test_handler_publishes_the_committed_pick_with_prefix_hashes() -> None:
    ds = Datastore()
    for i in range(3):
        ds.upsert_endpoint(Endpoint(name=f"pod{i}", address="127.0.0.1", port=8000 + i))
    ds.endpoints()[1].metrics.waiting_queue_size = 0
    for i in (0, 2):
        ds.endpoints()[i].metrics.waiting_queue_size = 5
    cfg = parse_scheduler_config(CONFIG, PluginContext(ds))
    handler = ExtProcHandler(ds, lambda: cfg.scheduler)
    sub = handler.decisions.subscribe()
    prompt = "You are a helpful assistant. " * 20

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        hm = base_pb2.HeaderMap()
        for k, v in {":method": "POST", ":path": "/v1/completions", "x-request-id": "rid-9",
                     "x-gateway-inference-objective": "gold"}.items():
            hm.headers.add(key=k, raw_value=v.encode())
        yield pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm))
        body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 7}).encode()
        yield pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))

    answers = [raw async for raw in handler.process(gen(), None)]
    assert answers
    (event,) = sub.drain()
    assert event.request_id == "rid-9" and event.objective == "gold" and event.max_tokens == 7
    assert event.target == "127.0.0.1:8001"  # the only pod with an empty queue
    assert event.prompt is None and event.prompt_chars == len(prompt)
    assert event.prefix_block_size == 64 and len(event.prefix_hashes) == len(prompt) // 64
    assert set(event.scores) == {"default/pod0", "default/pod1", "default/pod2"}
