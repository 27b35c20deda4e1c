"""The hand-encoded responses must parse, field for field, as the real Envoy protos."""

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.server import wire
from epp.server.errors import RequestError


def _parse(data: bytes) -> pb.ProcessingResponse:
    msg = pb.ProcessingResponse()
    msg.ParseFromString(data)
    return msg


def test_headers_continue_is_an_empty_headers_response() -> None:
    msg = _parse(wire.headers_continue())
    assert msg.WhichOneof("response") == "request_headers"
    assert not msg.request_headers.response.HasField("header_mutation")


def test_body_response_sets_destination_header_and_metadata() -> None:
    mutation = wire.header_mutation([("x-gateway-destination-endpoint", "10.0.0.1:8000"),
                                     ("x-prefiller-host-port", "10.0.0.2:8000")])
    meta = wire.dynamic_metadata("envoy.lb", [("x-gateway-destination-endpoint", "10.0.0.1:8000,10.0.0.3:8000")])
    msg = _parse(wire.request_body_response(wire.common_response(mutation), meta))
    assert msg.WhichOneof("response") == "request_body"
    headers = msg.request_body.response.header_mutation.set_headers
    assert [(h.header.key, h.header.raw_value) for h in headers] == [
        ("x-gateway-destination-endpoint", b"10.0.0.1:8000"),
        ("x-prefiller-host-port", b"10.0.0.2:8000"),
    ]
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in headers)
    lb = msg.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000,10.0.0.3:8000"


def test_clear_route_cache_flag() -> None:
    msg = _parse(wire.request_headers_response(wire.common_response(b"", clear_route_cache=True)))
    assert msg.request_headers.response.clear_route_cache


def test_streamed_body_response_hands_the_body_back() -> None:
    body = b'{"model":"m","prompt":"' + b"x" * 5000 + b'"}'
    msg = _parse(wire.streamed_body_response(b"", body, True))
    streamed = msg.request_body.response.body_mutation.streamed_response
    assert streamed.body == body
    assert streamed.end_of_stream


def test_immediate_response_carries_status_headers_and_openai_error() -> None:
    err = RequestError(404, "The model `x` does not exist.", "model_not_found", "model")
    msg = _parse(err.to_immediate_response("req-1"))
    imm = msg.immediate_response
    assert imm.status.code == 404
    headers = {h.header.key: h.header.raw_value for h in imm.headers.set_headers}
    assert headers == {"content-type": b"application/json", "x-request-id": b"req-1"}
    import json

    body = json.loads(imm.body)
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    assert body["error"]["message"] == "The model `x` does not exist."


def test_large_varints_roundtrip() -> None:
    value = "a" * 300_000  # lengths above 2**14 need 3-byte varints
    msg = _parse(wire.request_body_response(wire.common_response(
        wire.header_mutation([("k", value)]))))
    assert msg.request_body.response.header_mutation.set_headers[0].header.raw_value == value.encode()


def test_varints_match_protobufs_own_encoder() -> None:
    # One-byte values come from a table, longer ones from the loop: both must be the
    # protobuf library's encoding (google.protobuf.internal.encoder is its pure-Python one).
    from google.protobuf.internal import encoder

    for n in (*range(0, 300), 16383, 16384, 2**21, 2**32 - 1, 2**35 + 7, 4 * 1024 * 1024):
        assert wire._varint(n) == encoder._VarintBytes(n), n
