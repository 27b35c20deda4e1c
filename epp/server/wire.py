"""Hand-encoded ext_proc ProcessingResponse messages.

The hot path answers every request with one of a handful of message shapes. Building them
as protobuf objects and serializing costs tens of microseconds per request in Python; the
protobuf wire format of these shapes is simple enough to emit directly from cached byte
fragments. tests/unit/server/test_wire.py parses every shape back with the real Envoy protos.

Field numbers (envoy.service.ext_proc.v3):
  ProcessingResponse: request_headers=1 response_headers=2 request_body=3 response_body=4
                      immediate_response=7 dynamic_metadata=8 mode_override=9
  HeadersResponse/BodyResponse: response=1 (CommonResponse)
  CommonResponse: status=1 header_mutation=2 clear_route_cache=5
  HeaderMutation: set_headers=1 remove_headers=2
  HeaderValueOption: header=1 append_action=3 ; HeaderValue: key=1 raw_value=3
  ImmediateResponse: status=1 (HttpStatus{code=1}) headers=2 (HeaderMutation) body=3 details=5
  google.protobuf.Struct: fields=1 (map entry key=1 value=2) ; Value: string_value=3 struct_value=5
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

OVERWRITE_IF_EXISTS_OR_ADD = 2
# ProcessingMode.BodySendMode values, as Envoy reports them in protocol_config.
STREAMED = 1
BUFFERED = 2
FULL_DUPLEX_STREAMED = 4


_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))  # one byte each: tags, short lengths


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _vi(field: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(field << 3) + _varint(value)


def header_value_option(key: str, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    header = _ld(1, key.encode()) + _ld(3, raw)
    return _ld(1, header) + _vi(3, OVERWRITE_IF_EXISTS_OR_ADD)


def header_mutation(set_headers: Iterable[tuple[str, str | bytes]], remove: Iterable[str] = ()) -> bytes:
    out = b"".join(_ld(1, header_value_option(k, v)) for k, v in set_headers)
    out += b"".join(_ld(2, k.encode()) for k in remove)
    return out


def common_response(mutation: bytes = b"", clear_route_cache: bool = False,
                    body: bytes | None = None) -> bytes:
    """CommonResponse; `body` replaces the buffered request body (BodyMutation.body)."""
    out = _ld(2, mutation) if mutation else b""
    if body is not None:
        out += _ld(3, _ld(1, body))
    if clear_route_cache:
        out += _vi(5, 1)
    return out


def _struct_string_entry(key: str, value: str) -> bytes:
    return _ld(1, _ld(1, key.encode()) + _ld(2, _ld(3, value.encode())))


def _struct_struct_entry(key: str, inner_struct: bytes) -> bytes:
    return _ld(1, _ld(1, key.encode()) + _ld(2, _ld(5, inner_struct)))


def dynamic_metadata(namespace: str, values: Iterable[tuple[str, str]]) -> bytes:
    """ProcessingResponse.dynamic_metadata field: {namespace: {key: value, ...}}."""
    inner = b"".join(_struct_string_entry(k, v) for k, v in values)
    return _ld(8, _struct_struct_entry(namespace, inner))


# --- whole ProcessingResponse messages -------------------------------------------------------

def headers_continue() -> bytes:
    """Answer to request headers: continue, nothing changed."""
    return _ld(1, _ld(1, b""))


def response_headers_continue() -> bytes:
    return _ld(2, _ld(1, b""))


def response_body_continue() -> bytes:
    return _ld(4, _ld(1, b""))


def request_trailers_continue() -> bytes:
    return _ld(5, b"")


def response_trailers_continue() -> bytes:
    return _ld(6, b"")


def request_headers_response(common: bytes, metadata: bytes = b"") -> bytes:
    return _ld(1, _ld(1, common)) + metadata


def response_headers_response(common: bytes) -> bytes:
    """Answer to response headers with a CommonResponse (e.g. a header to add)."""
    return _ld(2, _ld(1, common))


def request_body_response(common: bytes, metadata: bytes = b"") -> bytes:
    return _ld(3, _ld(1, common)) + metadata


def request_body_clear() -> bytes:
    """Answer to a STREAMED request body chunk: drop the chunk (BodyMutation.clear_body)."""
    return request_body_response(_ld(3, _vi(2, 1)))


@functools.lru_cache(maxsize=64)  # a handful of (int, int, int) shapes: encoded once each
def processing_mode(request_body_mode: int, response_body_mode: int, response_header_mode: int = 0) -> bytes:
    """ProcessingResponse.mode_override (field 9), a ProcessingMode: request_header_mode=1
    response_header_mode=2 request_body_mode=3 response_body_mode=4 (enum values; header
    DEFAULT=0 keeps the filter's configured mode, body modes are always taken as given)."""
    inner = (_vi(2, response_header_mode) if response_header_mode else b"") \
        + (_vi(3, request_body_mode) if request_body_mode else b"") \
        + (_vi(4, response_body_mode) if response_body_mode else b"")
    return _ld(9, inner)


def immediate_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = (),
                       details: str = "", mutation: bytes = b"") -> bytes:
    """`mutation`: an already encoded HeaderMutation payload, sent before `headers`."""
    inner = _ld(1, _vi(1, status))
    mutation += header_mutation(headers)
    if mutation:
        inner += _ld(2, mutation)
    inner += _ld(3, body)
    if details:
        inner += _ld(5, details.encode())
    return _ld(7, inner)


def streamed_body_response(common_mutation: bytes, body: bytes, end_of_stream: bool,
                           metadata: bytes = b"") -> bytes:
    """FULL_DUPLEX_STREAMED: a BodyResponse that hands the (unchanged) body back to Envoy.

    `common_mutation` is a HeaderMutation payload (may be empty); BodyMutation.streamed_response
    is field 3 of BodyMutation, itself CommonResponse field 3.
    """
    streamed = _ld(1, body) + (_vi(2, 1) if end_of_stream else b"")
    common = (_ld(2, common_mutation) if common_mutation else b"") + _ld(3, _ld(3, streamed))
    return _ld(3, _ld(1, common)) + metadata
