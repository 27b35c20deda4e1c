"""OpenAI-style error answers sent to clients as ext_proc ImmediateResponses."""

from __future__ import annotations

import json

from epp.server import wire

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """The OpenAI error JSON: {"error": {"message", "type", "param", "code"}}."""
    return json.dumps({"error": {
        "message": message,
        "type": _TYPES.get(status, "Error"),
        "param": param,
        "code": code or str(status),
    }}).encode()


class RequestError(Exception):
    """A request the EPP answers itself instead of routing it."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = headers  # extra response headers, e.g. `allow` on a 405

    def to_immediate_response(self, request_id: str = "") -> bytes:
        headers = [("content-type", "application/json")]
        if request_id:
            headers.append(("x-request-id", request_id))
        if self.retry_after_s is not None:
            headers.append(("retry-after", str(self.retry_after_s)))
        headers.extend(self.headers)
        return wire.immediate_response(
            self.status, error_body(self.status, self.message, self.code, self.param), headers,
            details=f"epp_{self.code or self.status}")


class ImmediateAnswer(Exception):
    """A request the EPP answers itself with a prebuilt, non-error ImmediateResponse
    (e.g. 204 to OPTIONS); `payload` is the encoded ProcessingResponse."""

    def __init__(self, payload: bytes, status: int) -> None:
        super().__init__(f"answered with {status}")
        self.payload = payload
        self.status = status
