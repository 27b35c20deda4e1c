"""Property-based fuzzing (Hypothesis) of the request parser and the ext_proc handler.

Properties:
- parse_request either returns an LLMRequest or raises RequestError with a 4xx status;
  nothing else escapes it, whatever the bytes.
- ExtProcHandler, fed any sequence of ext_proc messages (any method, path, headers, body
  chunks, body mode), answers only with bytes that parse as Envoy's ProcessingResponse
  (the real protos from xds-protos): a normal routing answer, or an ImmediateResponse whose
  status is a valid HTTP code with an OpenAI-style JSON error body (or an empty 204). It
  never answers 500, except the documented refusal of the STREAMED body mode, and it
  releases every in-flight count when the stream ends.

Bounded for CI (derandomized, a few hundred examples, a few seconds). A longer random run:
    EPP_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/unit/server/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore, Endpoint, InferenceObjective
from epp.prefixcache.runtime import SERVICE_KEY
from epp.scheduling.registry import PluginContext
from epp.server.errors import RequestError
from epp.server.extproc import ExtProcHandler
from epp.server.request import parse_request
from tests.unit.server.test_soak_memory import CONFIG

EXAMPLES = int(os.environ.get("EPP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 200, deadline=None, database=None, derandomize=not EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/m", "/health",
         "/v1/embeddings", "/tokenize", "/v1/nope", "/", "", "/v1/completions?x=1"]
METHODS = ["POST", "GET", "HEAD", "DELETE", "OPTIONS", "PUT", "PATCH"]
ROUTING_HEADERS = ["x-gateway-destination-endpoint", "x-gateway-destination-endpoint-served",
                   "x-prefiller-host-port", "x-prefiller-url", "x-gateway-inference-objective"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
messages = st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), json_values, max_size=3)
    | json_values, max_size=4)
openai_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "sql-lora", "unknown"]) | json_values},
    optional={"prompt": st.text(max_size=200) | st.lists(st.integers(), max_size=20) | json_values,
              "messages": messages, "stream": json_values, "max_tokens": json_values,
              "max_completion_tokens": json_values, "cache_salt": json_values,
              "add_generation_prompt": json_values},
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = (openai_bodies.map(_encode) | json_values.map(_encode) | st.binary(max_size=300)
          | st.sampled_from([b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"model":"m","prompt":' + b"[" * 3000]))


def _datastore() -> Datastore:
    ds = Datastore()
    for i in range(3):
        ds.upsert_endpoint(Endpoint(name=f"pod{i}", address="127.0.0.1", port=8000 + i))
    ds.served_models = {"m", "sql-lora"}
    ds.upsert_objective(InferenceObjective(name="critical", model_name="m", priority=1))
    return ds


@given(body=bodies, path=st.sampled_from(PATHS) | st.text(max_size=30),
       headers=st.dictionaries(st.sampled_from(ROUTING_HEADERS) | st.text(max_size=20), st.text(max_size=30),
                               max_size=4))
@FUZZ
def test_parser_returns_a_request_or_a_4xx(body: bytes, path: str, headers: dict[str, str]) -> None:
    try:
        request = parse_request(body, path, "rid", headers, _datastore())
    except RequestError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        assert e.message
        return
    assert isinstance(request.model, str) and request.model


class Rig:
    def __init__(self, tmp: Path) -> None:
        (tmp / "epp.yaml").write_text(CONFIG)
        self.ds = _datastore()
        self.ctx = PluginContext(datastore=self.ds, services={"metrics.registry": CollectorRegistry()})
        scheduler = load_scheduler_config(tmp / "epp.yaml", self.ctx).scheduler
        self.handler = ExtProcHandler(self.ds, lambda: scheduler)
        self.loop = asyncio.new_event_loop()

    def run(self, msgs: list[pb.ProcessingRequest]) -> list[bytes]:
        async def gen() -> AsyncIterator[pb.ProcessingRequest]:
            for m in msgs:
                yield m

        async def drive() -> list[bytes]:
            return [raw async for raw in self.handler.process(gen(), None)]

        return self.loop.run_until_complete(drive())

    def close(self) -> None:
        runtime = self.ctx.services.get(SERVICE_KEY)
        if runtime is not None:
            self.loop.run_until_complete(runtime.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("fuzz"))
    yield r
    r.close()


def _headers_msg(method: str, path: str, extra: dict[str, str], eos: bool, body_mode: int | None) -> Any:
    hm = base_pb2.HeaderMap()
    for k, v in [(":method", method), (":path", path), ("x-request-id", "fuzz"), *extra.items()]:
        hm.headers.add(key=k, raw_value=v.encode("utf-8", "surrogatepass"))
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=eos))
    if body_mode is not None:
        msg.protocol_config.request_body_mode = body_mode
    return msg


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[pb.ProcessingRequest], int | None]:
    method = draw(st.sampled_from(METHODS) | st.text(max_size=8))
    path = draw(st.sampled_from(PATHS) | st.text(max_size=30))
    extra = draw(st.dictionaries(st.sampled_from(ROUTING_HEADERS) | st.text(min_size=1, max_size=20),
                                 st.text(max_size=30), max_size=4))
    body_mode = draw(st.sampled_from([None, 0, 2, 4]) | st.sampled_from([1, 3, 99]))
    body = draw(bodies)
    eos = draw(st.booleans()) if body == b"" else False
    msgs = [] if draw(st.integers(0, 9)) == 0 else [_headers_msg(method, path, extra, eos, body_mode)]
    if not eos:
        cut = draw(st.integers(0, len(body)))
        chunks = [body[:cut], body[cut:]] if cut else [body]
        for i, chunk in enumerate(chunks):
            msgs.append(pb.ProcessingRequest(
                request_body=pb.HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1)))
        if draw(st.booleans()):
            msgs.append(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    status = base_pb2.HeaderMap()
    status.headers.add(key=":status", raw_value=draw(st.sampled_from([b"200", b"500", b"abc", b""])))
    msgs.append(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=status)))
    return msgs, body_mode


ROUTING_ANSWERS = {"request_headers", "request_body", "response_headers", "response_body",
                   "request_trailers", "response_trailers"}


@given(case=streams())
@FUZZ
def test_handler_answers_are_well_formed(rig: Rig, case: tuple[list[pb.ProcessingRequest], int | None]) -> None:
    msgs, body_mode = case
    for raw in rig.run(msgs):
        resp = pb.ProcessingResponse()
        resp.ParseFromString(raw)  # raises on malformed bytes
        which = resp.WhichOneof("response")
        if which != "immediate_response":
            assert which in ROUTING_ANSWERS, which
            continue
        ir = resp.immediate_response
        assert 200 <= ir.status.code <= 599
        headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
        if ir.status.code == 204:
            assert ir.body == b"" and headers["allow"]
            continue
        assert headers["content-type"] == "application/json"
        error = json.loads(ir.body)["error"]
        assert error["message"] and error["code"]
        if ir.status.code >= 500:
            # Only the pool (503) or a misconfigured body mode may fail a request; never a crash.
            assert ir.status.code == 503 or error["code"] == "epp_unsupported_body_mode", error
            assert error["code"] != "epp_internal_error"
        if error["code"] == "epp_unsupported_body_mode":
            assert body_mode == 1
    assert all(ep.inflight == 0 for ep in rig.ds.endpoints())
