"""ExtProcHandler at its edges: client-sent routing headers, unknown paths, wrong methods,
bad bodies, unsupported body modes. Answers are parsed with the real Envoy protos."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.server.extproc import ExtProcHandler
from tests.unit.server.test_extproc import LeastInflight, _body, _datastore, _run


def _headers(path: str, method: str, eos: bool, extra: dict[str, str] | None = None,
             body_mode: int | None = None, without_waiting: bool = False) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": method, ":path": path, "x-request-id": "rid-9", **(extra or {})}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=eos))
    if body_mode is not None:
        msg.protocol_config.request_body_mode = body_mode
        msg.protocol_config.send_body_without_waiting_for_header_response = without_waiting
    return msg


def _mutation(resp: pb.ProcessingResponse) -> Any:
    return getattr(resp, resp.WhichOneof("response")).response.header_mutation


def _immediate(resp: pb.ProcessingResponse) -> tuple[int, dict[str, str], dict[str, Any] | None]:
    assert resp.WhichOneof("response") == "immediate_response", resp
    ir = resp.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
    return ir.status.code, headers, json.loads(ir.body) if ir.body else None


SPOOFED = {
    "x-gateway-destination-endpoint": "10.9.9.9:1",
    "x-gateway-destination-endpoint-served": "10.9.9.9:2",
    "x-gateway-destination-endpoint-fallback": "10.9.9.9:3",
    "x-prefiller-host-port": "10.9.9.9:4",
    "x-prefiller-url": "http://10.9.9.9:5",
}


@pytest.mark.parametrize("name", sorted(SPOOFED))
async def test_client_routing_headers_are_removed_from_body_answers(name: str) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/completions", "POST", False, {name: SPOOFED[name]}),
        _body({"model": "m", "prompt": "hi"})])
    mutation = _mutation(out[1])
    assert name in mutation.remove_headers
    sets = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert sets["x-gateway-destination-endpoint"].startswith("127.0.0.1:800")
    assert "10.9.9.9" not in json.dumps([h.header.raw_value.decode() for h in mutation.set_headers])


async def test_fixed_routing_headers_are_removed_even_when_the_client_sent_none() -> None:
    """Headers SKIP mode: the EPP never sees the client's headers, so the fixed names are
    removed on every answer (a prebuilt fragment)."""
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/models", "GET", True)])
    assert set(_mutation(out[0]).remove_headers) >= {
        "x-gateway-destination-endpoint", "x-prefiller-host-port", "x-prefiller-url"}


async def test_unknown_path_is_an_openai_json_404() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/nope", "POST", False), _body({"model": "m", "prompt": "x"})])
    status, headers, body = _immediate(out[0])
    assert status == 404 and headers["content-type"] == "application/json"
    assert body is not None and body["error"]["code"] == "not_found"
    assert "/v1/nope" in body["error"]["message"]
    assert sched.requests == []


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/completions", "POST, OPTIONS"),
    ("HEAD", "/v1/chat/completions", "POST, OPTIONS"),
    ("DELETE", "/v1/chat/completions", "POST, OPTIONS"),
    ("POST", "/v1/models", "GET, HEAD, OPTIONS"),
    ("DELETE", "/v1/models/m", "GET, HEAD, OPTIONS"),
])
async def test_wrong_method_is_a_405_with_allow(method: str, path: str, allow: str) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers(path, method, True)])
    status, headers, body = _immediate(out[0])
    assert status == 405 and headers["allow"] == allow
    assert body is not None and body["error"]["code"] == "method_not_allowed"
    assert all(e.inflight == 0 for e in ds.endpoints())


async def test_options_is_a_204_with_allow() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers("/v1/chat/completions", "OPTIONS", True)])
    status, headers, body = _immediate(out[0])
    assert status == 204 and headers["allow"] == "POST, OPTIONS" and body is None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/some-model", "/health", "/v1/models?x=1"])
async def test_read_paths_are_routed_for_get_and_head(path: str, method: str) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers(path, method, True)])
    assert out[0].WhichOneof("response") == "request_headers"


async def test_bodyless_post_to_an_inference_path_is_a_400() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers("/v1/completions", "POST", True)])
    status, _, body = _immediate(out[0])
    assert status == 400 and body is not None and body["error"]["code"] == "invalid_request_body"


@pytest.mark.parametrize("full_duplex", [False, True])
async def test_get_with_an_empty_chunked_body_is_routed(full_duplex: bool) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/models", "GET", False, body_mode=4 if full_duplex else None), _body(b"")])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    if full_duplex:
        assert out[1].request_body.response.body_mutation.streamed_response.end_of_stream
    sets = {h.header.key for h in _mutation(out[0 if full_duplex else 1]).set_headers}
    assert "x-gateway-destination-endpoint" in sets
    assert all(e.inflight == 0 for e in ds.endpoints())


async def test_get_with_a_body_is_a_400() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/models", "GET", False), _body(b"{}")])
    assert out[0].WhichOneof("response") == "request_headers"  # buffered: CONTINUE first
    status, _, _ = _immediate(out[1])
    assert status == 400


@pytest.mark.parametrize("body", [
    b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "m", "prompt": "x", "extra": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    b'{"model": "m", "prompt": [[[["deep"]]]]}',
    b'{"model": "m", "prompt": [true, false]}',
])
async def test_deep_or_odd_bodies_are_400_not_500(body: bytes) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers("/v1/completions", "POST", False), _body(body)])
    status, headers, err = _immediate(out[1])
    assert status == 400 and headers["content-type"] == "application/json", err
    assert err is not None and err["error"]["type"] == "BadRequestError"


async def test_streamed_body_mode_that_waits_for_the_headers_answer_is_refused_with_a_clear_error() -> None:
    # Without send_body_without_waiting_for_header_response Envoy sends no body until the
    # headers are answered: the EPP could only route blind.
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/completions", "POST", False, body_mode=1)])
    status, _, body = _immediate(out[0])
    assert status == 500 and body is not None and "send_body_without_waiting" in body["error"]["message"]
    assert body["error"]["code"] == "epp_unsupported_body_mode"


async def test_streamed_body_mode_answers_the_headers_with_the_pick_then_every_chunk_in_order() -> None:
    ds, sched = _datastore(), LeastInflight()
    body = json.dumps({"model": "m", "prompt": "hello there"}).encode()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/completions", "POST", False, {"x-prefiller-url": "http://10.9.9.9:5"},
                 body_mode=1, without_waiting=True),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body[:7], end_of_stream=False)),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body[7:20], end_of_stream=False)),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body[20:], end_of_stream=True))])
    # Envoy holds the headers and each chunk until answered: headers first, then one answer
    # per chunk, none of which touches the body.
    assert [r.WhichOneof("response") for r in out] == ["request_headers", *["request_body"] * 3]
    mutation = _mutation(out[0])
    sets = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert sets["x-gateway-destination-endpoint"].startswith("127.0.0.1:800")
    assert "x-prefiller-url" in mutation.remove_headers
    assert "envoy.lb" in out[0].dynamic_metadata.fields  # the pick and fallbacks for the LB
    for r in out[1:]:
        assert not r.request_body.response.HasField("body_mutation")
        assert not r.request_body.response.HasField("header_mutation")
    assert all(e.inflight == 0 for e in ds.endpoints())  # the stream ended: released


async def test_streamed_body_mode_replaces_a_rewritten_body_on_the_last_chunk() -> None:
    from epp.server.extproc import HandlerOptions

    ds, sched = _datastore(), LeastInflight()
    body = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
    handler = ExtProcHandler(ds, lambda: sched, options=HandlerOptions(stream_include_usage=True))
    out = await _run(handler, [
        _headers("/v1/completions", "POST", False, body_mode=1, without_waiting=True),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body[:9], end_of_stream=False)),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body[9:], end_of_stream=True))])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body", "request_body"]
    assert out[1].request_body.response.body_mutation.clear_body
    new_body = out[2].request_body.response.body_mutation.body
    assert json.loads(new_body)["stream_options"] == {"include_usage": True}
    sets = {h.header.key: h.header.raw_value.decode() for h in _mutation(out[0]).set_headers}
    assert sets["content-length"] == str(len(new_body))


async def test_streamed_body_mode_errors_are_immediate_responses() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [
        _headers("/v1/completions", "POST", False, body_mode=1, without_waiting=True),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b"{not json", end_of_stream=True))])
    status, _, err = _immediate(out[0])
    assert status == 400 and err is not None and len(out) == 1


def test_every_body_mode_but_an_unknown_one_is_accepted_at_config_load() -> None:
    from epp.localstack.envoy_config import EnvoyConfigParams

    with pytest.raises(ValueError, match="cannot route"):
        EnvoyConfigParams(request_body_mode="NONE")  # type: ignore[arg-type]
    assert EnvoyConfigParams().request_body_mode == "STREAMED"

