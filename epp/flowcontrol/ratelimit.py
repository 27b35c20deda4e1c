"""Per-tenant requests-per-minute and tokens-per-minute limits.

A sliding-window counter per tenant and limit: the count of the current minute plus the
previous minute's count weighted by the part of it still inside the last 60 s. Tokens are
estimated at admission (prompt characters / 4 + max_tokens) and corrected from the
response's usage when Envoy sends response bodies to the EPP.

The state lives in memory (one EPP process) or, with a Redis URL, in Redis: windows keyed by
tenant and minute number, checked and counted atomically by one Lua script on the Redis
server's clock, so every EPP replica and worker shares the same limits and the same windows.
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


# The window's minute and fraction come from the Redis server's clock (TIME) unless the caller
# passes its own `now` (ARGV[1] non-empty; the tests' simulated clock). Why: with several EPP
# processes, a request whose `now` was read just before a minute boundary can reach Redis after
# one read just after it; judged against different windows, the two together could admit more
# than the limit. One clock, read inside the atomic script, orders every decision.
# Key names are built here from the prefix (one Redis, not a cluster: see docs/flow-control.md).
_CLOCK_LUA = """
local now = tonumber(ARGV[1])
if now == nil then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[2])
local minute = math.floor(now / window)
local frac = (now % window) / window
"""

_ADMIT_LUA = _CLOCK_LUA + """
local function used(kind)
  local prev = redis.call('GET', KEYS[1] .. kind .. ':' .. (minute - 1)) or '0'
  local cur = redis.call('GET', KEYS[1] .. kind .. ':' .. minute) or '0'
  return tonumber(prev) * (1 - frac) + tonumber(cur)
end
local rlimit, tlimit, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local retry = math.max(1, math.ceil(window - now % window))
if rlimit > 0 and used('requests') + 1 > rlimit then return {1, retry} end
if tlimit > 0 and used('tokens') + tokens > tlimit then return {2, retry} end
for _, kv in ipairs({{'requests', 1}, {'tokens', tokens}}) do
  local key = KEYS[1] .. kv[1] .. ':' .. minute
  redis.call('INCRBY', key, kv[2])
  redis.call('EXPIRE', key, 2 * window)
end
return {0, 0}
"""

_ADD_TOKENS_LUA = _CLOCK_LUA + """
local key = KEYS[1] .. 'tokens:' .. minute
redis.call('INCRBY', key, tonumber(ARGV[3]))
redis.call('EXPIRE', key, 2 * window)
return 0
"""


class RedisLimitStore:
    """Windows in Redis: `<prefix><tenant>:<kind>:<minute>` counters expiring after 2 minutes.

    `server_clock` (the default) judges every request by the Redis server's clock and ignores the
    caller's `now`, so all EPP processes share one timeline; False uses the caller's `now` (tests
    that simulate time)."""

    def __init__(self, url: str, key_prefix: str = "epp:ratelimit:", server_clock: bool = True) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url)
        self._prefix = key_prefix
        self._server_clock = server_clock
        self._admit = self._redis.register_script(_ADMIT_LUA)
        self._add_tokens = self._redis.register_script(_ADD_TOKENS_LUA)

    def _now_arg(self, now: float) -> str:
        return "" if self._server_clock else repr(now)

    async def admit(self, tenant: Tenant, tokens: int, now: float) -> Verdict:
        args: list[str | int] = [self._now_arg(now), WINDOW_S, tenant.requests_per_minute,
                                 tenant.tokens_per_minute, tokens]
        result, retry_after = await self._admit(keys=[f"{self._prefix}{tenant.name}:"], args=args)
        if int(result) == 0:
            return Verdict("")
        return Verdict("requests" if int(result) == 1 else "tokens", int(retry_after))

    async def add_tokens(self, tenant: str, delta: int, now: float) -> None:
        await self._add_tokens(keys=[f"{self._prefix}{tenant}:"], args=[self._now_arg(now), WINDOW_S, delta])

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
