"""Limit-store behaviour shared by the memory store (unit) and the Redis store (integration)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from epp.flowcontrol.ratelimit import LimitStore
from epp.flowcontrol.tenants import Tenant

LimitCase = Callable[[LimitStore], Awaitable[None]]
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


async def requests_per_minute_with_sliding_window(store: LimitStore) -> None:
    t = Tenant("rpm", requests_per_minute=2)
    assert (await store.admit(t, 1, T0 + 10)).exceeded == ""
    assert (await store.admit(t, 1, T0 + 20)).exceeded == ""
    v = await store.admit(t, 1, T0 + 30)
    assert v.exceeded == "requests" and v.retry_after_s == 30
    # Next minute, 30 s in: the previous minute's 2 count half -> 1 used, one more fits.
    assert (await store.admit(t, 1, T0 + 90)).exceeded == ""
    assert (await store.admit(t, 1, T0 + 91)).exceeded == "requests"
    # Two minutes later everything has slid out.
    assert (await store.admit(t, 1, T0 + 250)).exceeded == ""


async def tokens_per_minute_and_correction(store: LimitStore) -> None:
    t = Tenant("tpm", tokens_per_minute=100)
    assert (await store.admit(t, 60, T0 + 1)).exceeded == ""
    assert (await store.admit(t, 60, T0 + 2)).exceeded == "tokens"  # 120 > 100
    await store.add_tokens("tpm", -40, T0 + 3)  # the response used 20, not 60
    assert (await store.admit(t, 60, T0 + 4)).exceeded == ""  # 20 + 60 <= 100
    await store.add_tokens("tpm", 50, T0 + 5)  # a response longer than estimated
    assert (await store.admit(t, 1, T0 + 6)).exceeded == "tokens"


async def tenants_are_independent(store: LimitStore) -> None:
    a, b = Tenant("ind-a", requests_per_minute=1), Tenant("ind-b", requests_per_minute=1)
    assert (await store.admit(a, 1, T0)).exceeded == ""
    assert (await store.admit(a, 1, T0)).exceeded == "requests"
    assert (await store.admit(b, 1, T0)).exceeded == ""


CASES: list[LimitCase] = [requests_per_minute_with_sliding_window, tokens_per_minute_and_correction,
                          tenants_are_independent]
