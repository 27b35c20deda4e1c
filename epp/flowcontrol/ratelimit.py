"""Per-tenant requests-per-minute and tokens-per-minute limits.

A sliding-window counter per tenant and limit: the count of the current minute plus the
previous minute's count weighted by the part of it still inside the last 60 s. Tokens are
estimated at admission (prompt characters / 4 + max_tokens) and corrected from the
response's usage when Envoy sends response bodies to the EPP.

The state lives in memory (one EPP process) or, with a Redis URL, in Redis: windows keyed by
tenant and minute number, checked and counted atomically by one Lua script, so every EPP
replica and worker shares the same limits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from epp.flowcontrol.tenants import Tenant
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError

WINDOW_S = 60
CHARS_PER_TOKEN = 4


def estimate_tokens(request: LLMRequest) -> int:
    return len(request.prompt_text()) // CHARS_PER_TOKEN + (request.max_tokens or 0)


@dataclass(frozen=True, slots=True)
class Verdict:
    exceeded: str  # "" admitted, else "requests" or "tokens"
    retry_after_s: int = 0


class LimitStore(Protocol):
    async def admit(self, tenant: Tenant, tokens: int, now: float) -> Verdict: ...
    async def add_tokens(self, tenant: str, delta: int, now: float) -> None: ...
    async def close(self) -> None: ...


def _retry_after(now: float) -> int:
    # The previous minute's weight decays to zero by the end of this one.
    return max(1, math.ceil(WINDOW_S - now % WINDOW_S))


class MemoryLimitStore:
    """One process's windows: {(tenant, kind): [minute, current, previous]}."""

    def __init__(self) -> None:
        self._w: dict[tuple[str, str], list[float]] = {}

    def _usage(self, key: tuple[str, str], now: float) -> tuple[list[float], float]:
        minute = now // WINDOW_S
        w = self._w.get(key)
        if w is None:
            w = self._w[key] = [minute, 0.0, 0.0]
        elif w[0] != minute:
            w[2] = w[1] if w[0] == minute - 1 else 0.0
            w[1], w[0] = 0.0, minute
        frac = (now % WINDOW_S) / WINDOW_S
        return w, w[2] * (1.0 - frac) + w[1]

    async def admit(self, tenant: Tenant, tokens: int, now: float) -> Verdict:
        rw, rused = self._usage((tenant.name, "requests"), now)
        tw, tused = self._usage((tenant.name, "tokens"), now)
        if tenant.requests_per_minute and rused + 1 > tenant.requests_per_minute:
            return Verdict("requests", _retry_after(now))
        if tenant.tokens_per_minute and tused + tokens > tenant.tokens_per_minute:
            return Verdict("tokens", _retry_after(now))
        rw[1] += 1
        tw[1] += tokens
        return Verdict("")

    async def add_tokens(self, tenant: str, delta: int, now: float) -> None:
        w, _ = self._usage((tenant, "tokens"), now)
        w[1] += delta

    async def close(self) -> None:
        pass


_ADMIT_LUA = """
local frac = tonumber(ARGV[1])
local function used(cur, prev)
  return tonumber(redis.call('GET', prev) or '0') * (1 - frac) + tonumber(redis.call('GET', cur) or '0')
end
local rlimit, tlimit, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rlimit > 0 and used(KEYS[1], KEYS[2]) + 1 > rlimit then return 1 end
if tlimit > 0 and used(KEYS[3], KEYS[4]) + tokens > tlimit then return 2 end
redis.call('INCRBY', KEYS[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('INCRBY', KEYS[3], tokens)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 0
"""


class RedisLimitStore:
    """Windows in Redis: `<prefix><tenant>:<kind>:<minute>` counters expiring after 2 minutes."""

    def __init__(self, url: str, key_prefix: str = "epp:ratelimit:") -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url)
        self._prefix = key_prefix
        self._admit = self._redis.register_script(_ADMIT_LUA)

    def _key(self, tenant: str, kind: str, minute: int) -> str:
        return f"{self._prefix}{tenant}:{kind}:{minute}"

    async def admit(self, tenant: Tenant, tokens: int, now: float) -> Verdict:
        minute = int(now // WINDOW_S)
        keys = [self._key(tenant.name, "requests", minute), self._key(tenant.name, "requests", minute - 1),
                self._key(tenant.name, "tokens", minute), self._key(tenant.name, "tokens", minute - 1)]
        args = [(now % WINDOW_S) / WINDOW_S, tenant.requests_per_minute, tenant.tokens_per_minute, tokens,
                2 * WINDOW_S]
        result = int(await self._admit(keys=keys, args=args))
        if result == 0:
            return Verdict("")
        return Verdict("requests" if result == 1 else "tokens", _retry_after(now))

    async def add_tokens(self, tenant: str, delta: int, now: float) -> None:
        key = self._key(tenant, "tokens", int(now // WINDOW_S))
        pipe = self._redis.pipeline()
        pipe.incrby(key, delta)
        pipe.expire(key, 2 * WINDOW_S)
        await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


class TenantLimiter:
    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self.counts: dict[tuple[str, str], int] = {}  # (tenant, outcome) -> requests

    async def admit(self, tenant: Tenant, request: LLMRequest) -> int:
        """Admits (returns the token estimate to correct later) or raises RequestError(429)."""
        tokens = estimate_tokens(request)
        if not (tenant.requests_per_minute or tenant.tokens_per_minute):
            return tokens
        verdict = await self.store.admit(tenant, tokens, time.time())
        if verdict.exceeded:
            self._count(tenant.name, f"rejected_{verdict.exceeded}")
            per = "requests" if verdict.exceeded == "requests" else "tokens"
            limit = tenant.requests_per_minute if per == "requests" else tenant.tokens_per_minute
            raise RequestError(429, f"rate limit of {limit} {per} per minute exceeded for this API key; "
                               f"retry after {verdict.retry_after_s} s", f"rate_limit_{per}_per_minute",
                               retry_after_s=verdict.retry_after_s)
        self._count(tenant.name, "admitted")
        return tokens

    async def correct(self, tenant: str, estimated: int, actual: int) -> None:
        if actual != estimated:
            await self.store.add_tokens(tenant, actual - estimated, time.time())

    def _count(self, tenant: str, outcome: str) -> None:
        self.counts[(tenant, outcome)] = self.counts.get((tenant, outcome), 0) + 1
