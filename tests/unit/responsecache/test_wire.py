"""The cache's ext_proc messages parse, field for field, as the real Envoy protos."""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.responsecache.cache import ResponseCache
from epp.responsecache.policy import CachePlan
from epp.server import wire


def _parse(data: bytes) -> pb.ProcessingResponse:
    msg = pb.ProcessingResponse()
    msg.ParseFromString(data)
    return msg


def test_request_headers_answer_asks_for_response_headers() -> None:
    msg = _parse(wire.headers_continue() + wire.processing_mode(2, 0, 1))
    assert msg.WhichOneof("response") == "request_headers"
    mode = msg.mode_override
    assert mode.response_header_mode == mode_pb.ProcessingMode.SEND
    assert mode.request_body_mode == mode_pb.ProcessingMode.BUFFERED
    assert mode.response_body_mode == mode_pb.ProcessingMode.NONE
    assert mode.request_header_mode == mode_pb.ProcessingMode.DEFAULT


def test_response_headers_answer_turns_on_the_body() -> None:
    for body_mode, name in ((1, "STREAMED"), (2, "BUFFERED")):
        msg = _parse(wire.response_headers_continue() + wire.processing_mode(2, body_mode))
        assert msg.WhichOneof("response") == "response_headers"
        assert mode_pb.ProcessingMode.BodySendMode.Name(msg.mode_override.response_body_mode) == name
        assert msg.mode_override.response_header_mode == mode_pb.ProcessingMode.DEFAULT


def test_hit_is_an_immediate_200_with_the_cache_header() -> None:
    plan = CachePlan(key="k", model="m", stream=True, ttl_s=1, max_entry_bytes=10, lookup=True)
    msg = _parse(ResponseCache.hit_response(plan, b"data: [DONE]\n\n", "req-1"))
    ir = msg.immediate_response
    assert msg.WhichOneof("response") == "immediate_response" and ir.status.code == 200
    assert ir.body == b"data: [DONE]\n\n" and ir.details == "epp_response_cache_hit"
    headers = {h.header.key: h.header.raw_value for h in ir.headers.set_headers}
    assert headers == {"content-type": b"text/event-stream", "cache-control": b"no-cache",
                       "x-epp-cache": b"hit", "x-request-id": b"req-1"}


def test_miss_response_headers_name_the_miss_and_can_turn_on_the_body() -> None:
    from epp.responsecache.cache import MISS_RESPONSE_HEADERS

    msg = _parse(MISS_RESPONSE_HEADERS + wire.processing_mode(2, 1))
    assert msg.WhichOneof("response") == "response_headers"
    headers = {h.header.key: h.header.raw_value for h in msg.response_headers.response.header_mutation.set_headers}
    assert headers == {"x-epp-cache": b"miss"}
    assert msg.mode_override.response_body_mode == mode_pb.ProcessingMode.STREAMED
