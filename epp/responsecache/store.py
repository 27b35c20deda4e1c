"""Where cached answers live: an in-memory LRU (the default, one per EPP process) or Redis
(shared by every EPP replica and worker).

A store raises StoreError when it cannot answer; the cache then treats the request as a miss
(the pods answer it) and counts the error. Redis calls are bounded by a socket timeout, and
after an error the Redis store refuses at once for `retry_after_s` instead of making every
request wait on a dead server.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NoReturn, Protocol


class StoreError(Exception):
    """The store could not answer (a real error, counted as one)."""


class StoreUnavailable(StoreError):
    """The store is backing off after an error: refused without trying."""


class CacheStore(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """LRU over total bytes; an entry past its TTL is dropped when it is next read."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Any = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisStore:
    """Entries as plain Redis strings `<prefix><sha256>` with a TTL (SET ... PX)."""

    name = "redis"

    def __init__(self, url: str, key_prefix: str = "epp:rc:", timeout_s: float = 0.05,
                 retry_after_s: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                                   socket_connect_timeout=timeout_s)
        self._prefix = key_prefix
        self._retry_after_s = retry_after_s
        self._down_until = 0.0

    async def get(self, key: str) -> bytes | None:
        self._check()
        try:
            value = await self._redis.get(self._prefix + key)
        except Exception as e:  # redis-py raises ConnectionError, TimeoutError, ResponseError, OSError
            self._failed(e)
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._check()
        try:
            await self._redis.set(self._prefix + key, value, px=ttl_s * 1000)
        except Exception as e:
            self._failed(e)

    def _check(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable("redis unavailable (backing off after an error)")

    def _failed(self, e: Exception) -> NoReturn:
        self._down_until = time.monotonic() + self._retry_after_s
        raise StoreError(f"redis: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        await self._redis.aclose()
