"""What the server's flow gate runs per request: the tenant's rate limits (when API keys are
configured), then the flow controller (when flow control is enabled).

    admit(request, nbytes) -> None (route now) | RequestError (refuse) | ticket
    await wait(ticket)                 # raises RequestError when refused
    on_complete(request, response)     # capacity freed; token estimate corrected from usage

Rate limits are checked before queueing, so a tenant over its limit never takes queue space.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.queue import QueueItem
from epp.flowcontrol.ratelimit import TenantLimiter
from epp.flowcontrol.tenants import TENANT_HEADER, ApiKeyAuth
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError

log = logging.getLogger("epp.flowcontrol")


@dataclass(slots=True)
class _RateCheck:
    request: LLMRequest
    nbytes: int


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter("epp_tenant_requests", "Requests per tenant by admission outcome.",
                                ["tenant", "outcome"], registry=registry)
        self.tokens = Counter("epp_tenant_tokens", "Tokens per tenant: estimated at admission, and "
                              "actual from the response's usage.", ["tenant", "kind"], registry=registry)


class AdmissionPipeline:
    def __init__(self, flow: FlowController | None, auth: ApiKeyAuth | None = None,
                 limiter: TenantLimiter | None = None, metrics: TenantMetrics | None = None) -> None:
        self.flow = flow
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics
        self._estimates: dict[str, int] = {}  # request id -> admitted token estimate
        self._corrections: set[asyncio.Task[None]] = set()

    def admit(self, request: LLMRequest, nbytes: int) -> Any:
        if self.limiter is not None and request.headers.get(TENANT_HEADER):
            return _RateCheck(request, nbytes)
        return self.flow.admit(request, nbytes) if self.flow is not None else None

    async def wait(self, ticket: Any) -> None:
        if isinstance(ticket, _RateCheck):
            await self._rate_check(ticket.request)
            if self.flow is None:
                return
            verdict = self.flow.admit(ticket.request, ticket.nbytes)
            if verdict is None:
                return
            if isinstance(verdict, RequestError):
                raise verdict
            ticket = verdict
        assert self.flow is not None and isinstance(ticket, QueueItem)
        await self.flow.wait(ticket)

    async def _rate_check(self, request: LLMRequest) -> None:
        assert self.auth is not None and self.limiter is not None
        name = request.headers[TENANT_HEADER]
        tenant = self.auth.table.tenants.get(name)
        if tenant is None:  # keys reloaded between authentication and now
            return
        try:
            estimate = await self.limiter.admit(tenant, request)
        except RequestError as e:
            if self.metrics is not None:
                self.metrics.requests.labels(name, e.code or "rate_limited").inc()
            raise
        if self.metrics is not None:
            self.metrics.requests.labels(name, "admitted").inc()
            self.metrics.tokens.labels(name, "estimated").inc(estimate)
        if request.request_id:
            self._estimates[request.request_id] = estimate

    def on_evictable(self, request: LLMRequest, abort: Callable[[], None]) -> None:
        if self.flow is not None:
            self.flow.on_evictable(request, abort)

    def pod_priority(self, request: LLMRequest) -> int | None:
        return None if self.flow is None else self.flow.pod_priority(request)

    def may_evict(self, request: LLMRequest) -> bool:
        return self.flow is not None and self.flow.may_evict(request)

    def on_complete(self, request: LLMRequest | None, response: dict[str, Any] | None) -> None:
        if self.flow is not None:
            self.flow.on_release(request, response)
        if request is None or self.limiter is None or not self._estimates:
            return
        estimate = self._estimates.pop(request.request_id, None)
        tenant = request.headers.get(TENANT_HEADER)
        if estimate is None or not tenant or response is None:
            return
        prompt, completion = response.get("prompt_tokens"), response.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return  # no usage seen (Envoy does not send response bodies): the estimate stands
        actual = prompt + completion
        if self.metrics is not None:
            self.metrics.tokens.labels(tenant, "actual").inc(actual)
        task = asyncio.get_running_loop().create_task(self.limiter.correct(tenant, estimate, actual))
        self._corrections.add(task)
        task.add_done_callback(self._corrections.discard)
