"""The body-based router driven with real ext_proc protos, and its catalogue against real sim pods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from epp.bbr.catalog import ModelCatalog
from epp.bbr.config import BbrConfig, BbrConfigError, PoolModels, StaticModel, parse_config
from epp.bbr.handler import BbrHandler
from epp.sim.cluster import simulated_pods

A, B = "model-a", "model-b"


def _catalog() -> ModelCatalog:
    return ModelCatalog(BbrConfig((PoolModels("a", models=(StaticModel(A, "vllm"),)),
                                   PoolModels("b", models=(StaticModel(B, "sglang"), StaticModel(A, "sglang"))))))


def _headers(method: str = "POST", path: str = "/v1/completions", eos: bool = False,
             full_duplex: bool = False) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": method, ":path": path, "x-request-id": "r1", "x-gateway-model-name": B}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=eos))
    if full_duplex:
        msg.protocol_config.request_body_mode = 4
    return msg


def _body(obj: Any) -> pb.ProcessingRequest:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=True))


async def _run(handler: BbrHandler, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m

    return [pb.ProcessingResponse.FromString(raw) async for raw in handler.process(gen(), None)]


async def test_model_copied_into_header_and_route_cache_cleared() -> None:
    out = await _run(BbrHandler(_catalog()), [_headers(), _body({"model": A, "prompt": "hi"})])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    common = out[1].request_body.response
    assert common.clear_route_cache
    sets = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    # the client-sent value (model-b) is overwritten: the body decides
    assert sets == {"x-gateway-model-name": A}
    assert common.header_mutation.set_headers[0].append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


async def test_full_duplex_answers_headers_then_returns_the_body() -> None:
    body = {"model": B, "messages": [{"role": "user", "content": "hi"}]}
    out = await _run(BbrHandler(_catalog()), [_headers(full_duplex=True), _body(body)])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert out[0].request_headers.response.clear_route_cache
    streamed = out[1].request_body.response.body_mutation.streamed_response
    assert json.loads(streamed.body) == body and streamed.end_of_stream


async def test_streamed_without_waiting_answers_headers_with_the_model_then_each_chunk() -> None:
    headers = _headers()
    headers.protocol_config.request_body_mode = 1  # STREAMED
    headers.protocol_config.send_body_without_waiting_for_header_response = True
    raw = json.dumps({"model": A, "prompt": "hi"}).encode()
    out = await _run(BbrHandler(_catalog()), [
        headers, pb.ProcessingRequest(request_body=pb.HttpBody(body=raw[:5], end_of_stream=False)), _body(raw[5:])])
    # Envoy holds the headers and both chunks until each is answered, in order.
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body", "request_body"]
    common = out[0].request_headers.response
    assert common.clear_route_cache
    assert {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers} == \
        {"x-gateway-model-name": A}
    assert not any(r.request_body.response.HasField("body_mutation") for r in out[1:])


async def test_outcomes_are_counted() -> None:
    handler = BbrHandler(_catalog())
    await _run(handler, [_headers(), _body({"model": A})])
    await _run(handler, [_headers(), _body({"model": "zzz"})])
    await _run(handler, [_headers(), _body({"prompt": "x"})])
    await _run(handler, [_headers("GET", "/v1/models", eos=True)])
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(handler.metrics.render().decode()) for s in f.samples}
    for outcome in ("routed", "unknown_model", "missing_model", "models_list"):
        assert samples[("bbr_requests_total", (("outcome", outcome),))] == 1
    assert samples[("bbr_models", (("pool", "a"),))] == 1 and samples[("bbr_models", (("pool", "b"),))] == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"prompt": "no model"}, 400, "missing_model"),
    ({"model": 7}, 400, "invalid_model"),
    ({"model": ""}, 400, "invalid_model"),
    ({"model": "a\nb"}, 400, "invalid_model"),
    ({"model": "x" * 4097}, 400, "invalid_model"),
    (b"{nope", 400, "invalid_request_body"),
    (b"[1]", 400, "invalid_request_body"),
    ({"model": "other"}, 404, "model_not_found"),
])
async def test_bad_and_unknown_models_answered_here(body: Any, status: int, code: str) -> None:
    out = await _run(BbrHandler(_catalog()), [_headers(), _body(body)])
    imm = out[-1].immediate_response
    assert imm.status.code == status
    err = json.loads(imm.body)["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}


async def test_models_list_once_each_first_pool_wins() -> None:
    out = await _run(BbrHandler(_catalog()), [_headers("GET", "/v1/models", eos=True)])
    imm = out[0].immediate_response
    assert imm.status.code == 200
    data = json.loads(imm.body)["data"]
    assert [(m["id"], m["owned_by"]) for m in data] == [(A, "vllm"), (B, "sglang")]
    one = await _run(BbrHandler(_catalog()), [_headers("GET", f"/v1/models/{B}", eos=True)])
    assert json.loads(one[0].immediate_response.body)["owned_by"] == "sglang"
    missing = await _run(BbrHandler(_catalog()), [_headers("GET", "/v1/models/zzz", eos=True)])
    assert missing[0].immediate_response.status.code == 404
    empty_post = await _run(BbrHandler(_catalog()), [_headers("POST", "/v1/completions", eos=True)])
    assert empty_post[0].immediate_response.status.code == 400
    health = await _run(BbrHandler(_catalog()), [_headers("GET", "/health", eos=True)])
    assert health[0].WhichOneof("response") == "request_headers"  # no model: the route table decides


async def test_pool_discovery_from_pods_and_not_ready_until_known(tmp_path: Path) -> None:
    async with simulated_pods(2, time_scale=0.01, per_pod=[{"engine": "vllm", "model": A},
                                                          {"engine": "sglang", "model": B}]) as cluster:
        for i, (name, pod) in enumerate((("a", cluster.pods[0]), ("b", cluster.pods[1]))):
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"pods": [
                {"name": f"p{i}", "ip": "127.0.0.1", "port": pod.port}]}))
        cfg = parse_config({"pools": [{"name": "a", "endpointsFile": "a.yaml"},
                                      {"name": "b", "endpointsFile": "b.yaml"}]}, "bbr.yaml", tmp_path)
        catalog = ModelCatalog(cfg)
        handler = BbrHandler(catalog)
        early = await _run(handler, [_headers(), _body({"model": "zzz"})])
        assert early[-1].immediate_response.status.code == 503  # cannot tell 404 before knowing
        async with httpx.AsyncClient() as client:
            await catalog.refresh(client)
        assert catalog.complete() and catalog.pool_of(A) == "a" and catalog.pool_of(B) == "b"
        assert json.loads(catalog.listing())["data"][1]["owned_by"] == "sglang"
    async with httpx.AsyncClient() as client:  # the pods are gone: the last known lists stay
        await catalog.refresh(client)
    assert catalog.pool_of(B) == "b"


@pytest.mark.parametrize(("raw", "needle"), [
    ({}, "pools: must be a non-empty list"),
    ({"pools": [{"name": "a"}]}, "pools[0]: give exactly one of endpointsFile"),
    ({"pools": [{"name": "a", "models": [{"id": "x"}]}, {"name": "a", "models": [{"id": "y"}]}]},
     "pools[1].name: pool 'a' listed twice"),
    ({"pools": [{"name": "a", "models": [{"id": "x", "owner": "y"}]}]}, "pools[0].models[0]"),
    ({"pools": [{"name": "a", "models": [{"id": "x"}]}], "refreshSeconds": 0}, "refreshSeconds"),
    ({"pools": [{"name": "a", "models": [{"id": "x"}], "typo": 1}]}, "unknown field(s) ['typo']"),
])
def test_config_errors_name_the_field(raw: Any, needle: str) -> None:
    with pytest.raises(BbrConfigError, match=r"bbr\.yaml") as e:
        parse_config(raw, "bbr.yaml")
    assert needle in str(e.value)
