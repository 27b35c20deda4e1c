"""ExtProcHandler with the real flow controller (concurrency-detector, one request per pod):
a queued request is answered only once capacity frees, in the order Envoy expects (also in
full-duplex mode ending with trailers); an API-key gate answers 401 before anything else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.flowcontrol.config import BandConfig, FlowControlConfig
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.pipeline import AdmissionPipeline
from epp.flowcontrol.plugins.concurrency_detector import ConcurrencyDetector
from epp.flowcontrol.plugins.fcfs_ordering import FCFSOrdering
from epp.flowcontrol.plugins.global_strict_fairness import GlobalStrictFairness
from epp.flowcontrol.tenants import ApiKeyAuth
from epp.scheduling.registry import parse_params
from epp.server.extproc import ExtProcHandler
from tests.unit.server.test_extproc import LeastInflight, _body, _datastore, _headers, _response_headers, _run


def _handler() -> ExtProcHandler:
    ds = _datastore(1)
    det = ConcurrencyDetector(params=parse_params(ConcurrencyDetector.Params, {"maxConcurrency": 1}, "t"))
    cfg = FlowControlConfig(enabled=True, detector=det,
                            default_band=BandConfig(0, GlobalStrictFairness(), FCFSOrdering()))
    handler = ExtProcHandler(ds, LeastInflight)
    handler.flow = AdmissionPipeline(FlowController(cfg, ds.healthy_endpoints))
    return handler


async def _stream(handler: ExtProcHandler, msgs: list[pb.ProcessingRequest], hold: asyncio.Event,
                  out: list[str]) -> None:
    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m
        await hold.wait()  # the HTTP request is in flight until `hold` is set

    async for raw in handler.process(gen(), None):
        r = pb.ProcessingResponse()
        r.ParseFromString(raw)
        out.append(r.WhichOneof("response"))


async def test_queued_full_duplex_request_with_trailers_answers_in_order_when_capacity_frees() -> None:
    handler = _handler()
    body = json.dumps({"model": "m", "prompt": "hi"}).encode()
    first_done, second_done = asyncio.Event(), asyncio.Event()
    first: list[str] = []
    second: list[str] = []
    a = asyncio.create_task(_stream(handler, [_headers(), _body(body)], first_done, first))
    await asyncio.sleep(0.01)
    assert first == ["request_headers", "request_body"]  # routed: the pod is now full
    trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
    b = asyncio.create_task(_stream(handler, [_headers(full_duplex=True), _body(body, eos=False), trailers],
                                    second_done, second))
    await asyncio.sleep(0.05)
    assert second == []  # queued in the EPP: Envoy has no answer yet
    first_done.set()  # the first request ends: capacity frees
    await a
    await asyncio.sleep(0.05)
    assert second == ["request_headers", "request_body", "request_trailers"]
    second_done.set()
    await b


async def test_api_key_gate_answers_401_first(tmp_path: Path) -> None:
    handler = _handler()
    keys = tmp_path / "keys.yaml"
    keys.write_text("tenants: [{name: t, keys: [sk-t]}]\n")
    handler.auth = ApiKeyAuth(keys)
    body = json.dumps({"model": "m", "prompt": "hi"}).encode()
    out: list[pb.ProcessingResponse] = []

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        yield _headers(extra={"authorization": "Bearer sk-wrong"})
        yield _body(body)

    async for raw in handler.process(gen(), None):
        r = pb.ProcessingResponse()
        r.ParseFromString(raw)
        out.append(r)
    immediate = out[-1].immediate_response
    assert immediate.status.code == 401
    assert json.loads(immediate.body)["error"]["code"] == "invalid_api_key"


async def test_response_body_mode_override_only_for_requests_eviction_may_end() -> None:
    """With eviction on and the filter's response body mode NONE, the answer to an evictable
    request's response headers carries mode_override response_body_mode STREAMED (Envoy then
    sends its body chunks, which eviction answers); a critical request's does not, and neither
    does any request when the filter already streams response bodies."""
    from epp.datastore import InferenceObjective

    ds = _datastore(1)
    ds.upsert_objective(InferenceObjective(name="crit", model_name="crit", priority=1))
    ds.upsert_objective(InferenceObjective(name="shed", model_name="shed", priority=-1))
    det = ConcurrencyDetector(params=parse_params(ConcurrencyDetector.Params, {"maxConcurrency": 8}, "t"))
    cfg = FlowControlConfig(enabled=True, detector=det, enable_eviction=True, eviction_victim_max_priority=0,
                            default_band=BandConfig(0, GlobalStrictFairness(), FCFSOrdering()))
    handler = ExtProcHandler(ds, LeastInflight)
    handler.flow = AdmissionPipeline(FlowController(cfg, ds.healthy_endpoints))

    async def response_mode(objective: str, configured_mode: int) -> int | None:
        headers = _headers(extra={"x-gateway-inference-objective": objective})
        headers.protocol_config.response_body_mode = configured_mode
        out = await _run(handler, [headers, _body({"model": "m", "prompt": "hi"}), _response_headers(200)])
        assert out[-1].WhichOneof("response") == "response_headers"
        return out[-1].mode_override.response_body_mode if out[-1].HasField("mode_override") else None

    streamed = 1
    assert await response_mode("shed", 0) == streamed  # sheddable (-1 <= 0): evictable
    assert await response_mode("", 0) == streamed  # standard (0 <= 0): evictable
    assert await response_mode("crit", 0) is None  # critical: eviction never ends it
    assert await response_mode("shed", streamed) is None  # bodies already come: no override
    cfg.enable_eviction = False
    assert await response_mode("shed", 0) is None


async def test_forward_priority_to_pods_writes_the_negated_objective_priority_into_the_body() -> None:
    """flowControl.forwardPriorityToPods: the forwarded body's vLLM `priority` is the negated
    InferenceObjective priority (GIE: higher is more important; vLLM: lower goes first); a
    client-sent `priority` is overwritten, other fields are kept; off, the body is untouched."""
    from epp.datastore import InferenceObjective

    ds = _datastore(1)
    ds.upsert_objective(InferenceObjective(name="crit", model_name="crit", priority=1))
    ds.upsert_objective(InferenceObjective(name="shed", model_name="shed", priority=-1))
    det = ConcurrencyDetector(params=parse_params(ConcurrencyDetector.Params, {"maxConcurrency": 8}, "t"))
    cfg = FlowControlConfig(enabled=True, detector=det, forward_priority_to_pods=True,
                            default_band=BandConfig(0, GlobalStrictFairness(), FCFSOrdering()))
    handler = ExtProcHandler(ds, LeastInflight)
    handler.flow = AdmissionPipeline(FlowController(cfg, ds.healthy_endpoints))

    async def forwarded(objective: str, body: dict[str, object]) -> dict[str, object] | None:
        headers = _headers(extra={"x-gateway-inference-objective": objective} if objective else {})
        out = await _run(handler, [headers, _body(body), _response_headers(200)])
        common = out[1].request_body.response
        assert out[1].WhichOneof("response") == "request_body"
        if not common.HasField("body_mutation"):
            return None
        lengths = [h.header.raw_value for h in common.header_mutation.set_headers
                   if h.header.key == "content-length"]
        assert lengths == [str(len(common.body_mutation.body)).encode()]
        decoded: dict[str, object] = json.loads(common.body_mutation.body)
        return decoded

    body = {"model": "m", "prompt": "hi", "max_tokens": 3}
    assert await forwarded("crit", body) == {**body, "priority": -1}
    assert await forwarded("shed", {**body, "priority": -100}) == {**body, "priority": 1}
    assert await forwarded("", {**body, "priority": 7}) == {**body, "priority": 0}
    cfg.forward_priority_to_pods = False
    assert await forwarded("crit", {**body, "priority": 7}) is None  # off: the client's body as sent
