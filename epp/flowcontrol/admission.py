"""Admission control: shed sheddable work when the pool is saturated, and protect the EPP
process itself from unbounded backlog.

The server calls, per request:

    rejection = admission.admit(request)       # before scheduling
    if rejection: answer rejection.status with rejection.body (OpenAI error JSON)
    else: ... schedule, forward ...; finally admission.release()

and may wrap the scheduling step in `async with admission.decision_slot():` when the
decision awaits (tokenizer, remote index) so that at most `max_concurrent_decisions`
run at once, at most `max_queued_decisions` wait, and none waits longer than
`queue_timeout`. Rejections are prebuilt constants: refusing is cheap, which is the point
of refusing under overload.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
DECISION_QUEUE_FULL = AdmissionRejection(
    503, "epp_decision_queue_full",
    "The endpoint picker's scheduling queue is full. Retry later.",
    "service_unavailable",
)
DECISION_QUEUE_TIMEOUT = AdmissionRejection(
    503, "epp_decision_queue_timeout",
    "The request waited too long for a scheduling slot in the endpoint picker. Retry later.",
    "service_unavailable",
)


class AdmissionRejected(Exception):
    def __init__(self, rejection: AdmissionRejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


@dataclass(slots=True)
class AdmissionConfig:
    # Requests admitted and not yet released by this process (whole request lifetime).
    max_inflight_requests: int = 10_000
    # Scheduling decisions running concurrently inside decision_slot().
    max_concurrent_decisions: int = 256
    # Decisions allowed to wait for a slot; beyond this they are refused at once.
    max_queued_decisions: int = 1024
    queue_timeout: float = 1.0  # seconds a decision may wait for a slot
    # Requests with priority below this are sheddable (GIE: negative priority).
    sheddable_below_priority: int = 0

    def validate(self) -> None:
        for name in ("max_inflight_requests", "max_concurrent_decisions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued_decisions < 0:
            raise ValueError(f"max_queued_decisions must be >= 0, got {self.max_queued_decisions}")
        if self.queue_timeout <= 0:
            raise ValueError(f"queue_timeout must be > 0 seconds, got {self.queue_timeout}")


class Saturation(Protocol):
    def is_saturated(self) -> bool: ...


class AdmissionController:
    def __init__(self, saturation: Saturation | None, config: AdmissionConfig | None = None) -> None:
        self.saturation = saturation
        self.config = config or AdmissionConfig()
        self.config.validate()
        self.inflight = 0
        self.decisions_running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
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

    @property
    def queued_decisions(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def decision_slot(self) -> AsyncIterator[None]:
        """Bound concurrent scheduling decisions; raises AdmissionRejected when the wait
        queue is full or the wait exceeds queue_timeout."""
        cfg = self.config
        if self.decisions_running >= cfg.max_concurrent_decisions:
            if len(self._waiters) >= cfg.max_queued_decisions:
                raise AdmissionRejected(self._reject(DECISION_QUEUE_FULL))
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(cfg.queue_timeout):
                    await waiter
            except BaseException as e:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over_slot()  # granted just as we gave up: pass it on
                else:
                    waiter.cancel()
                    self._waiters.remove(waiter)
                if isinstance(e, TimeoutError):
                    raise AdmissionRejected(self._reject(DECISION_QUEUE_TIMEOUT)) from None
                raise
            # The releaser handed its slot to us (decisions_running was not decremented).
        else:
            self.decisions_running += 1
        try:
            yield
        finally:
            self._hand_over_slot()

    def _hand_over_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.decisions_running -= 1
