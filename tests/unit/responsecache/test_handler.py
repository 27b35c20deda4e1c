"""The cache inside ExtProcHandler, driven with real ProcessingRequest messages (no network):
which answers carry a mode override, a hit never reaches the scheduler, a miss is routed and
filled from its response body, a cut response is not stored, full-duplex trailers still end."""

from __future__ import annotations

import asyncio
import json

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from epp.responsecache.cache import ResponseCache
from epp.responsecache.config import parse_cache_config
from epp.responsecache.metrics import CacheMetrics
from epp.server.extproc import ExtProcHandler
from tests.unit.server.test_extproc import LeastInflight, _body, _datastore, _headers, _response_headers, _run

CHAT = "/v1/chat/completions"
QUESTION = {"model": "m", "messages": [{"role": "user", "content": "hours?"}], "temperature": 0, "max_tokens": 4}
ANSWER = {"choices": [{"index": 0, "message": {"content": "9 to 5"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 4}}


def _handler() -> tuple[ExtProcHandler, ResponseCache, LeastInflight]:
    sched = LeastInflight()
    handler = ExtProcHandler(_datastore(), lambda: sched)
    registry = CollectorRegistry()
    cache = ResponseCache(parse_cache_config({"rules": [{"model": "*"}]}), metrics=CacheMetrics(registry))
    _REGISTRIES[id(cache)] = registry
    handler.cache = cache
    return handler, cache, sched


_REGISTRIES: dict[int, CollectorRegistry] = {}


def _count(cache: ResponseCache, name: str, **labels: str) -> float:
    value = _REGISTRIES[id(cache)].get_sample_value(f"epp_response_cache_{name}_total", labels)
    return float(value or 0.0)


def _response_body(data: bytes, eos: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def test_header_answers_ask_for_response_headers_only_when_cacheable_could_apply() -> None:
    async def scenario() -> None:
        handler, _, _ = _handler()
        (post,) = await _run(handler, [_headers(CHAT)])
        assert post.HasField("mode_override") and post.mode_override.response_header_mode == 1
        (no_store,) = await _run(handler, [_headers(CHAT, extra={"cache-control": "no-store"})])
        assert not no_store.HasField("mode_override")
        handler.cache = None
        (plain,) = await _run(handler, [_headers(CHAT)])
        assert not plain.HasField("mode_override")
    asyncio.run(scenario())


def test_miss_is_routed_filled_then_hit_without_scheduling() -> None:
    async def scenario() -> None:
        handler, cache, sched = _handler()
        out = await _run(handler, [_headers(CHAT), _body(QUESTION), _response_headers(200),
                                   _response_body(json.dumps(ANSWER).encode(), True)])
        assert out[1].WhichOneof("response") == "request_body"  # routed to a pod
        resp_headers = out[2]
        assert resp_headers.mode_override.response_body_mode == 2  # BUFFERED for JSON
        assert [h.header.key for h in resp_headers.response_headers.response.header_mutation.set_headers] \
            == ["x-epp-cache"]
        await cache.drain()
        assert len(sched.requests) == 1
        out = await _run(handler, [_headers(CHAT), _body(QUESTION)])
        hit = out[-1].immediate_response
        assert hit.status.code == 200 and json.loads(hit.body)["choices"] == ANSWER["choices"]
        assert len(sched.requests) == 1  # the hit never reached the scheduler
        assert _count(cache, "hits", model="m") == 1
        assert _count(cache, "fills", model="m") == 1
    asyncio.run(scenario())


def test_cut_and_error_responses_are_not_stored() -> None:
    async def scenario() -> None:
        handler, cache, sched = _handler()
        stream = {**QUESTION, "stream": True}
        out = await _run(handler, [_headers(CHAT), _body(stream), _response_headers(200),
                                   _response_body(b'data: {"choices": []}\n\n', False)])
        assert out[2].mode_override.response_body_mode == 1  # STREAMED for SSE
        await _run(handler, [_headers(CHAT), _body(QUESTION), _response_headers(500),
                             _response_body(b'{"error": {}}', True)])
        await cache.drain()
        assert _count(cache, "skipped", reason="incomplete") == 1
        assert _count(cache, "skipped", reason="status_not_200") == 1
        assert _count(cache, "fills", model="m") == 0
        out = await _run(handler, [_headers(CHAT), _body(stream)])
        assert out[-1].WhichOneof("response") == "request_body"  # still a miss
        assert len(sched.requests) == 3
    asyncio.run(scenario())


def test_full_duplex_trailers_after_a_lookup() -> None:
    async def scenario() -> None:
        handler, _, _ = _handler()
        trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
        out = await _run(handler, [_headers(CHAT, full_duplex=True), _body(QUESTION, eos=False), trailers])
        kinds = [m.WhichOneof("response") for m in out]
        assert kinds == ["request_headers", "request_body", "request_trailers"]
    asyncio.run(scenario())


def test_model_label_values_are_bounded() -> None:
    from epp.responsecache.cache import MAX_MODEL_SERIES
    from epp.responsecache.policy import CachePlan

    async def scenario() -> None:
        _, cache, _ = _handler()
        for i in range(MAX_MODEL_SERIES + 5):
            plan = CachePlan(key=f"k{i}", model=f"model-{i}", stream=False, ttl_s=5, max_entry_bytes=10,
                             lookup=True)
            assert await cache.lookup(plan) is None
        assert _count(cache, "misses", model="__other__") == 5
    asyncio.run(scenario())
