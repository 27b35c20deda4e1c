"""The response-headers answer that sets a header (session token) parses as the real Envoy proto."""

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.server import wire


def test_response_headers_response_sets_a_header() -> None:
    data = wire.response_headers_response(wire.common_response(
        wire.header_mutation([("x-session-token", "ZGVmYXVsdC92bGxtLTA=")])))
    msg = pb.ProcessingResponse()
    msg.ParseFromString(data)
    assert msg.WhichOneof("response") == "response_headers"
    (h,) = msg.response_headers.response.header_mutation.set_headers
    assert (h.header.key, h.header.raw_value) == ("x-session-token", b"ZGVmYXVsdC92bGxtLTA=")
    assert h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD
