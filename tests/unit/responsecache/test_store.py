"""The in-memory LRU store (the Redis store is exercised against a real redis-server in
tests/integration/test_response_cache.py)."""

from __future__ import annotations

import asyncio

import pytest

from epp.responsecache.store import MemoryStore, RedisStore, StoreError, StoreUnavailable
from tests.helpers.procs import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_by_bytes_and_ttl() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(max_bytes=10, clock=clock)
        await store.set("a", b"1234", 10)
        await store.set("b", b"1234", 10)
        assert await store.get("a") == b"1234"  # a is now the most recent
        await store.set("c", b"1234", 10)  # 12 bytes > 10: the least recent (b) goes
        assert await store.get("b") is None and await store.get("a") == b"1234"
        assert store.bytes == 8 and len(store) == 2
        await store.set("a", b"12", 10)  # replacing frees the old bytes
        assert store.bytes == 6
        await store.set("huge", b"x" * 11, 10)  # larger than the whole cache: not stored
        assert await store.get("huge") is None
        clock.now = 10.0
        assert await store.get("a") is None and store.bytes == 4  # expired, dropped on read
        await store.close()
        assert len(store) == 0
    asyncio.run(scenario())


def test_redis_store_down_is_an_error_then_backs_off() -> None:
    async def scenario() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, retry_after_s=60)
        with pytest.raises(StoreError) as first:
            await store.get("k")
        assert not isinstance(first.value, StoreUnavailable)  # a real, counted error
        with pytest.raises(StoreUnavailable):  # then refused at once while backing off
            await store.set("k", b"v", 1)
        await store.close()
    asyncio.run(scenario())
