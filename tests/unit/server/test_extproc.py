"""ExtProcHandler driven with real ProcessingRequest messages (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from epp.datastore import Datastore, Endpoint, InferenceObjective
from epp.datastore.inflight import InflightConfig, InflightTracker
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult
from epp.server.errors import RequestError
from epp.server.extproc import ExtProcHandler


class LeastInflight:
    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []
        self.completed: list[tuple[str, dict[str, Any]]] = []

    def schedule(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> tuple[SchedulingResult, CycleState]:
        self.requests.append(request)
        ordered = sorted(endpoints, key=lambda e: (e.inflight, e.name))
        return SchedulingResult({"default": ProfileRunResult(list(ordered))}, "default"), CycleState()

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        pass

    def post_response(self, request: LLMRequest, target: Endpoint, response: dict[str, Any]) -> None:
        self.completed.append((target.name, response))


def _datastore(n: int = 3) -> Datastore:
    ds = Datastore()
    for i in range(n):
        ds.upsert_endpoint(Endpoint(name=f"pod{i}", address="127.0.0.1", port=8000 + i))
    return ds


def _headers(path: str = "/v1/completions", eos: bool = False, extra: dict[str, str] | None = None,
             full_duplex: bool = False, subset: list[str] | None = None) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": "POST" if not eos else "GET", ":path": path, "x-request-id": "rid-1",
                 **(extra or {})}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=eos))
    if full_duplex:
        msg.protocol_config.request_body_mode = 4
    if subset is not None:
        s = struct_pb2.Struct()
        s.fields["x-gateway-destination-endpoint-subset"].list_value.extend(subset)
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(s)
    return msg


def _body(obj: Any, eos: bool = True) -> pb.ProcessingRequest:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def _response_headers(status: int) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap()
    hm.headers.add(key=":status", raw_value=str(status).encode())
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=hm))


async def _run(handler: ExtProcHandler, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m

    out = []
    async for raw in handler.process(gen(), None):
        r = pb.ProcessingResponse()
        r.ParseFromString(raw)
        out.append(r)
    return out


def _dest(resp: pb.ProcessingResponse) -> str:
    common = getattr(resp, resp.WhichOneof("response")).response
    for h in common.header_mutation.set_headers:
        if h.header.key == "x-gateway-destination-endpoint":
            return h.header.raw_value.decode()
    raise AssertionError("no destination header")


async def test_buffered_flow_picks_and_releases() -> None:
    ds, sched = _datastore(), LeastInflight()
    handler = ExtProcHandler(ds, lambda: sched)
    out = await _run(handler, [_headers(), _body({"model": "m", "prompt": "hello"}), _response_headers(200)])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body", "response_headers"]
    assert _dest(out[1]) == "127.0.0.1:8000"
    md = out[1].dynamic_metadata.fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"]
    assert md.string_value.split(",")[0] == "127.0.0.1:8000"
    assert len(md.string_value.split(",")) == 3  # pick + 2 fallbacks
    assert sched.requests[0].prompt == "hello" and sched.requests[0].request_id == "rid-1"
    assert all(e.inflight == 0 for e in ds.endpoints())  # released when the stream ended
    assert sched.completed == [("pod0", {"status": 200})]


async def test_full_duplex_answers_headers_after_body_and_returns_body() -> None:
    ds, sched = _datastore(), LeastInflight()
    handler = ExtProcHandler(ds, lambda: sched)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    out = await _run(handler, [_headers("/v1/chat/completions", full_duplex=True),
                               _body(json.dumps(body).encode()[:10], eos=False),
                               _body(json.dumps(body).encode()[10:], eos=True)])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert _dest(out[0]) == "127.0.0.1:8000"
    assert out[1].request_body.response.body_mutation.streamed_response.body == json.dumps(body).encode()
    assert sched.requests[0].is_chat and sched.requests[0].messages == body["messages"]


async def test_bodyless_get_is_routed_on_headers() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers("/v1/models", eos=True)])
    assert out[0].WhichOneof("response") == "request_headers"
    assert _dest(out[0]).startswith("127.0.0.1:800")


async def test_subset_hint_is_honoured() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched),
                     [_headers(subset=["127.0.0.1:8002"]), _body({"model": "m", "prompt": "x"})])
    assert _dest(out[1]) == "127.0.0.1:8002"


async def test_subset_hint_with_no_match_is_503() -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched),
                     [_headers(subset=["10.9.9.9:1"]), _body({"model": "m", "prompt": "x"})])
    assert out[-1].immediate_response.status.code == 503


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_request_body"),
    (b"[1,2]", 400, "invalid_request_body"),
    (json.dumps({"prompt": "x"}).encode(), 400, "missing_model"),
    (json.dumps({"model": 7, "prompt": "x"}).encode(), 400, "invalid_model"),
    (json.dumps({"model": "m"}).encode(), 400, "missing_prompt"),
    (json.dumps({"model": "m", "prompt": "x", "stream": "yes"}).encode(), 400, "invalid_stream"),
    (json.dumps({"model": "m", "prompt": {"a": 1}}).encode(), 400, "invalid_prompt"),
])
async def test_bad_requests_get_openai_errors(body: bytes, status: int, code: str) -> None:
    ds, sched = _datastore(), LeastInflight()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers(), _body(body)])
    imm = out[-1].immediate_response
    assert imm.status.code == status
    err = json.loads(imm.body)["error"]
    assert err["code"] == code and err["message"]
    assert sched.requests == []


async def test_unknown_model_is_404_when_served_models_known() -> None:
    ds, sched = _datastore(), LeastInflight()
    ds.served_models = {"known"}
    # Legacy InferenceModel: a model name rewritten to a served target model.
    ds.upsert_objective(InferenceObjective(name="o", model_name="alias", priority=1,
                                           target_models=(("known", 1),)))
    # InferenceObjective: chosen by the x-gateway-inference-objective header.
    ds.upsert_objective(InferenceObjective(name="batch", model_name="batch", priority=-1))
    handler = ExtProcHandler(ds, lambda: sched)
    out = await _run(handler, [_headers(), _body({"model": "other", "prompt": "x"})])
    assert out[-1].immediate_response.status.code == 404
    out = await _run(handler, [_headers(), _body({"model": "alias", "prompt": "x"})])
    assert _dest(out[-1])
    assert sched.requests[-1].priority == 1
    assert sched.requests[-1].target_model == "known"
    rewritten = out[-1].request_body.response
    assert json.loads(rewritten.body_mutation.body) == {"model": "known", "prompt": "x"}
    lengths = [h.header.raw_value for h in rewritten.header_mutation.set_headers if h.header.key == "content-length"]
    assert lengths == [str(len(rewritten.body_mutation.body)).encode()]
    out = await _run(handler, [_headers(extra={"x-gateway-inference-objective": "batch"}),
                               _body({"model": "known", "prompt": "x"})])
    assert _dest(out[-1])
    assert sched.requests[-1].priority == -1


async def test_empty_pool_and_unhealthy_pool_are_503() -> None:
    sched = LeastInflight()
    out = await _run(ExtProcHandler(Datastore(), lambda: sched), [_headers(), _body({"model": "m", "prompt": "x"})])
    assert json.loads(out[-1].immediate_response.body)["error"]["code"] == "empty_pool"
    ds = _datastore(2)
    for e in ds.endpoints():
        ds.set_health(e, False)
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers(), _body({"model": "m", "prompt": "x"})])
    assert out[-1].immediate_response.status.code == 503
    assert json.loads(out[-1].immediate_response.body)["error"]["code"] == "no_healthy_endpoint"


async def test_scheduler_crash_is_a_500_not_a_dead_stream() -> None:
    class Broken(LeastInflight):
        def schedule(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> Any:
            raise RuntimeError("boom")

    ds, sched = _datastore(), Broken()
    out = await _run(ExtProcHandler(ds, lambda: sched), [_headers(), _body({"model": "m", "prompt": "x"})])
    assert out[-1].immediate_response.status.code == 500


async def test_admission_rejection_and_release() -> None:
    class OneSlot:
        def __init__(self) -> None:
            self.inflight = 0

        def admit(self, request: LLMRequest) -> RequestError | None:
            if request.priority < 0:
                return RequestError(429, "saturated", "inference_pool_saturated")
            self.inflight += 1
            return None

        def release(self) -> None:
            self.inflight -= 1

    ds, sched, adm = _datastore(), LeastInflight(), OneSlot()
    ds.upsert_objective(InferenceObjective(name="o", model_name="batch", priority=-1))
    handler = ExtProcHandler(ds, lambda: sched, admission=adm)
    out = await _run(handler, [_headers(), _body({"model": "batch", "prompt": "x"})])
    assert out[-1].immediate_response.status.code == 429
    await _run(handler, [_headers(), _body({"model": "m", "prompt": "x"})])
    assert adm.inflight == 0


async def test_usage_is_read_from_streamed_response() -> None:
    ds, sched = _datastore(), LeastInflight()
    handler = ExtProcHandler(ds, lambda: sched)
    sse = (b'data: {"choices":[{"text":"a"}]}\n\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
           b'"prompt_tokens_details":{"cached_tokens":3}}}\n\ndata: [DONE]\n\n')
    msgs = [_headers(), _body({"model": "m", "prompt": "x", "stream": True}), _response_headers(200),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=sse[:40])),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=sse[40:], end_of_stream=True))]
    out = await _run(handler, msgs)
    assert out[-1].WhichOneof("response") == "response_body"
    assert sched.completed[-1][1] == {"status": 200, "prompt_tokens": 5, "completion_tokens": 2,
                                      "cached_tokens": 3}


async def test_inflight_charge_holds_until_the_stream_ends_and_counts_tokens() -> None:
    ds, sched = _datastore(), LeastInflight()
    tracker = InflightTracker(ds, InflightConfig(default_output_tokens=7))
    handler = ExtProcHandler(ds, lambda: sched, tracker=tracker)
    gate = asyncio.Event()

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        yield _headers()
        yield _body({"model": "m", "prompt": "x" * 400})  # 100 prompt tokens, no max_tokens
        await gate.wait()  # the response is still streaming

    task = asyncio.create_task(_drain(handler.process(gen(), None)))
    await asyncio.sleep(0.01)
    pod0 = ds.endpoints()[0]
    assert (pod0.inflight, pod0.inflight_tokens) == (1, 107)
    gate.set()
    await task
    assert (pod0.inflight, pod0.inflight_tokens) == (0, 0)


async def test_dropped_stream_releases_the_charge() -> None:
    ds, sched = _datastore(), LeastInflight()
    handler = ExtProcHandler(ds, lambda: sched)

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        yield _headers()
        yield _body({"model": "m", "prompt": "hello", "max_tokens": 5})
        raise ConnectionResetError("Envoy went away")  # what a reset gRPC stream looks like

    with pytest.raises(ConnectionResetError):
        await _drain(handler.process(gen(), None))
    assert all(e.inflight == 0 and e.inflight_tokens == 0 for e in ds.endpoints())
    assert handler.tracker.open_charges(ds.endpoints()[0]) == 0


async def test_cancelled_stream_releases_the_charge() -> None:
    ds, sched = _datastore(), LeastInflight()
    handler = ExtProcHandler(ds, lambda: sched)

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        yield _headers()
        yield _body({"model": "m", "prompt": "hello"})
        await asyncio.sleep(3600)

    task = asyncio.create_task(_drain(handler.process(gen(), None)))
    await asyncio.sleep(0.01)
    assert ds.endpoints()[0].inflight == 1
    task.cancel()  # grpc.aio cancels the handler when the client (Envoy) cancels
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ds.endpoints()[0].inflight == 0


async def _drain(responses: AsyncIterator[bytes]) -> None:
    async for _ in responses:
        pass
