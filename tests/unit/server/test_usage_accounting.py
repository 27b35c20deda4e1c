"""Usage accounting: the counters, and the streaming request rewrite that makes streams report."""

from __future__ import annotations

import json

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from epp.server.extproc import ExtProcHandler, HandlerOptions
from epp.server.usage import OVERFLOW, UsageMetrics, UsageParser, stream_usage_requested, with_stream_usage
from tests.helpers.metrics import scraped_samples
from tests.unit.server.test_extproc import LeastInflight, _body, _datastore, _headers, _run


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: value for key, value in scraped_samples(registry).items() if key[0].endswith("_total")}


def test_counters_per_model_target_and_tenant() -> None:
    reg = CollectorRegistry()
    usage = UsageMetrics(reg)
    usage.record("m", "m-canary", "team-a", {"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 8})
    usage.record("m", "m-canary", "team-a", {"prompt_tokens": 5, "completion_tokens": 1})
    usage.record("m", "m", "", {})
    s = _samples(reg)
    key = (("model_name", "m"), ("target_model_name", "m-canary"), ("tenant", "team-a"))
    assert s[("epp_usage_prompt_tokens_total", key)] == 15
    assert s[("epp_usage_completion_tokens_total", key)] == 4
    assert s[("epp_usage_cached_prompt_tokens_total", key)] == 8
    assert s[("epp_usage_responses_total", (*key, ("usage", "reported")))] == 2
    missing = (("model_name", "m"), ("target_model_name", "m"), ("tenant", ""), ("usage", "missing"))
    assert s[("epp_usage_responses_total", missing)] == 1


def test_label_sets_are_bounded() -> None:
    reg = CollectorRegistry()
    usage = UsageMetrics(reg, max_series=2)
    for i in range(5):
        usage.record(f"m{i}", f"m{i}", "", {"prompt_tokens": 1, "completion_tokens": 1})
    s = _samples(reg)
    models = {dict(k)["model_name"] for n, k in s if n == "epp_usage_prompt_tokens_total"}
    assert models == {"m0", "m1", OVERFLOW}
    assert s[("epp_usage_prompt_tokens_total", ((("model_name", OVERFLOW), ("target_model_name", OVERFLOW),
                                                 ("tenant", OVERFLOW))))] == 3


def test_stream_usage_chunk_is_parsed() -> None:
    parser = UsageParser(stream=True)
    for chunk in (b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[],"usage":{"prompt_tokens":4,',
                  b'"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":3}}}\n\ndata: [DONE]\n\n'):
        parser.feed(chunk)
    assert parser.result() == {"prompt_tokens": 4, "completion_tokens": 2, "cached_tokens": 3}


def test_stream_options_helpers() -> None:
    assert not stream_usage_requested({"stream": True})
    assert stream_usage_requested({"stream_options": {"include_usage": True}})
    assert with_stream_usage({"stream": True, "stream_options": {"continuous_usage_stats": True}}) == {
        "stream": True, "stream_options": {"continuous_usage_stats": True, "include_usage": True}}


def _sent_body(resp: pb.ProcessingResponse) -> tuple[dict[str, object] | None, dict[str, str]]:
    common = resp.request_body.response
    headers = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    body = json.loads(common.body_mutation.body) if common.HasField("body_mutation") else None
    return body, headers


async def test_streaming_requests_ask_for_usage_when_enabled() -> None:
    handler = ExtProcHandler(_datastore(), lambda: LeastInflight(), options=HandlerOptions(stream_include_usage=True))
    out = await _run(handler, [_headers(), _body({"model": "m", "prompt": "hi", "stream": True})])
    body, headers = _sent_body(out[1])
    assert body == {"model": "m", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    assert headers["content-length"] == str(len(out[1].request_body.response.body_mutation.body))
    # Not streaming, or already asking: the body goes through untouched.
    for request in ({"model": "m", "prompt": "hi"},
                    {"model": "m", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}):
        out = await _run(handler, [_headers(), _body(request)])
        assert _sent_body(out[1])[0] is None
    off = ExtProcHandler(_datastore(), lambda: LeastInflight())
    out = await _run(off, [_headers(), _body({"model": "m", "prompt": "hi", "stream": True})])
    assert _sent_body(out[1])[0] is None
