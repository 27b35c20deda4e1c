"""Admission control: shed sheddable work when the pool is saturated, and protect the EPP
process itself from unbounded backlog.

The server calls, per request:

    rejection = admission.admit(request)       # before scheduling
    if rejection: answer rejection.status with rejection.body (OpenAI error JSON)
    else: ... schedule, forward ...; finally admission.release()

Rejections are prebuilt constants: refusing is cheap, which is the point of refusing under
overload. (A scheduling decision never awaits, so each worker process runs one at a time
and needs no separate bound on concurrent decisions: `max_inflight_requests` bounds the
work a process holds.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from epp.scheduling.types import LLMRequest


@dataclass(frozen=True, slots=True)
class AdmissionRejection:
    """Why a request is refused and what to answer (HTTP status, OpenAI error body)."""

    status: int
    code: str
    message: str
    error_type: str = "server_error"
    body: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        error = {"message": self.message, "type": self.error_type, "param": None, "code": self.code}
        payload = {"error": error}
        object.__setattr__(self, "body", json.dumps(payload, separators=(",", ":")).encode())


POOL_SATURATED = AdmissionRejection(
    429, "inference_pool_saturated",
    "The inference pool is saturated; sheddable requests (priority < 0) are rejected. Retry later.",
    "rate_limit_exceeded",
)
EPP_OVERLOADED = AdmissionRejection(
    503, "epp_overloaded",
    "The endpoint picker has too many requests in flight. Retry later.",
    "service_unavailable",
)


@dataclass(slots=True)
class AdmissionConfig:
    # Requests admitted and not yet released by this process (whole request lifetime).
    max_inflight_requests: int = 10_000
    # Requests with priority below this are sheddable (GIE: negative priority).
    sheddable_below_priority: int = 0

    def validate(self) -> None:
        if self.max_inflight_requests < 1:
            raise ValueError(f"max_inflight_requests must be >= 1, got {self.max_inflight_requests}")


class Saturation(Protocol):
    def is_saturated(self) -> bool: ...


class AdmissionController:
    def __init__(self, saturation: Saturation | None, config: AdmissionConfig | None = None) -> None:
        self.saturation = saturation
        self.config = config or AdmissionConfig()
        self.config.validate()
        self.inflight = 0
        self.rejected: dict[str, int] = {}

    def admit(self, request: LLMRequest) -> AdmissionRejection | None:
        """None admits the request (the caller must call release() when it ends)."""
        if self.inflight >= self.config.max_inflight_requests:
            return self._reject(EPP_OVERLOADED)
        if (
            request.priority < self.config.sheddable_below_priority
            and self.saturation is not None
            and self.saturation.is_saturated()
        ):
            return self._reject(POOL_SATURATED)
        self.inflight += 1
        return None

    def release(self) -> None:
        if self.inflight > 0:
            self.inflight -= 1

    def _reject(self, rejection: AdmissionRejection) -> AdmissionRejection:
        self.rejected[rejection.code] = self.rejected.get(rejection.code, 0) + 1
        return rejection
