"""When the ResponseReceived hook fires: a streamed response's first token is its first body
chunk, because vLLM (a Starlette StreamingResponse under uvicorn) sends the headers before the
prefill (tests/unit/sim/test_sim_stream_headers.py compares the simulator with that stack)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.datastore import Endpoint
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult
from epp.server.extproc import ExtProcHandler
from epp.server.wire import BUFFERED, STREAMED
from tests.unit.server.test_extproc import _body, _datastore, _dest, _headers, _response_headers

SSE = (b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\ndata: [DONE]\n\n')


class RecordingScheduler:
    """Picks the first endpoint; notes how many messages Envoy had sent when the hook fired."""

    def __init__(self, sent: list[str], plugins: Sequence[object] = ("latency",)) -> None:
        self.sent = sent
        self.received: list[tuple[int, int]] = []  # (messages sent by then, status)
        self.response_received_plugins = tuple(plugins)

    def schedule(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> tuple[SchedulingResult, CycleState]:
        return SchedulingResult({"default": ProfileRunResult(list(endpoints))}, "default"), CycleState()

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        pass

    def response_received(self, request: LLMRequest, target: Endpoint, status: int) -> None:
        self.received.append((len(self.sent), status))

    def post_response(self, request: LLMRequest, target: Endpoint, response: dict[str, Any]) -> None:
        pass


async def _exchange(body_mode: int | None, stream: bool, status: int = 200,
                    plugins: Sequence[object] = ("latency",)) -> list[tuple[int, int]]:
    """One request through the handler, its response in two body chunks; the messages are
    counted as the handler reads them."""
    sent: list[str] = []
    sched = RecordingScheduler(sent, plugins)
    head = _headers()
    if body_mode is not None:
        head.protocol_config.response_body_mode = body_mode
    msgs = [head, _body({"model": "m", "prompt": "x", "stream": stream}), _response_headers(status),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=SSE[0])),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=SSE[1], end_of_stream=True))]

    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            sent.append(m.WhichOneof("request"))
            yield m

    handler = ExtProcHandler(_datastore(), lambda: sched)
    async for _ in handler.process(gen(), None):
        pass
    return sched.received


async def test_a_streamed_response_is_received_at_its_first_body_chunk() -> None:
    # Headers, body, response headers, then the first chunk: the 4th message; once.
    assert await _exchange(STREAMED, stream=True) == [(4, 200)]


async def test_without_streamed_bodies_the_headers_stand_in_and_a_warning_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epp.server"):
        assert await _exchange(None, stream=True) == [(3, 200)]
        assert await _exchange(BUFFERED, stream=True) == [(3, 200)]
    warnings = [r for r in caplog.records if "response_body_mode" in r.getMessage()]
    # Once per handler, naming the mode to set.
    assert len(warnings) == 2 and all("STREAMED" in r.getMessage() for r in warnings)
    assert "NONE" in warnings[0].getMessage() and "BUFFERED" in warnings[1].getMessage()


async def test_no_warning_without_a_plugin_that_learns_from_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epp.server"):
        assert await _exchange(None, stream=True, plugins=()) == [(3, 200)]
    assert not [r for r in caplog.records if "response_body_mode" in r.getMessage()]


async def test_a_response_not_streamed_or_an_error_is_received_at_its_headers() -> None:
    # Not streamed: vLLM sends the headers with the whole body. An error has no first token.
    assert await _exchange(STREAMED, stream=False) == [(3, 200)]
    assert await _exchange(STREAMED, stream=True, status=503) == [(3, 503)]


async def test_the_routing_answer_waits_for_a_dispatch_hold() -> None:
    """A PreRequest plugin may hold the request (SchedulingResult.dispatch_after, the latency
    runtime's deferral): the routing answer goes only once the hold ends, and a hold that
    fails still routes."""
    gate = asyncio.Event()
    answered: list[float] = []

    class Holding(RecordingScheduler):
        def __init__(self, hold: Any) -> None:
            super().__init__([])
            self.hold = hold

        def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
            result.dispatch_after = self.hold()

    async def released() -> None:
        await gate.wait()

    async def broken() -> None:
        raise RuntimeError("boom")

    for hold in (released, broken):
        sched = Holding(hold)
        handler = ExtProcHandler(_datastore(), lambda s=sched: s)

        async def gen() -> AsyncIterator[pb.ProcessingRequest]:
            yield _headers()
            yield _body({"model": "m", "prompt": "x"})

        async def drive(handler: ExtProcHandler) -> list[pb.ProcessingResponse]:
            out = []
            async for raw in handler.process(gen(), None):
                r = pb.ProcessingResponse()
                r.ParseFromString(raw)
                out.append(r)
                answered.append(asyncio.get_running_loop().time())
            return out

        task = asyncio.create_task(drive(handler))
        await asyncio.sleep(0.05)
        if hold is released:
            assert len(answered) == 1  # the headers' answer only: the routing answer waits
            gate.set()
        out = await task
        assert _dest(out[-1]) == "127.0.0.1:8000"
        answered.clear()
