"""Per-tenant sliding-window limits in memory; the same cases run against the real Redis in
tests/integration/test_ratelimit_redis.py."""

from __future__ import annotations

import asyncio

import pytest

from epp.flowcontrol.ratelimit import MemoryLimitStore, TenantLimiter, estimate_tokens
from epp.flowcontrol.tenants import Tenant
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError
from tests.unit.flowcontrol.limit_cases import CASES, LimitCase


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_memory_store(case: LimitCase) -> None:
    asyncio.run(case(MemoryLimitStore()))


def test_token_estimate_is_prompt_chars_over_4_plus_max_tokens() -> None:
    req = LLMRequest(request_id="r", model="m", target_model="m", prompt="x" * 400, max_tokens=50)
    assert estimate_tokens(req) == 150


def test_limiter_answers_429_with_retry_after_and_counts() -> None:
    async def scenario() -> None:
        limiter = TenantLimiter(MemoryLimitStore())
        tenant = Tenant("t", requests_per_minute=1)
        req = LLMRequest(request_id="r", model="m", target_model="m", prompt="hi", max_tokens=1)
        assert await limiter.admit(tenant, req) == 1
        with pytest.raises(RequestError) as exc:
            await limiter.admit(tenant, req)
        e = exc.value
        assert (e.status, e.code) == (429, "rate_limit_requests_per_minute")
        assert e.retry_after_s is not None and 1 <= e.retry_after_s <= 60
        assert limiter.counts == {("t", "admitted"): 1, ("t", "rejected_requests"): 1}
        unlimited = Tenant("u")
        for _ in range(100):
            await limiter.admit(unlimited, req)
    asyncio.run(scenario())
