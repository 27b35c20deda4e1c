"""Per-tenant limits in a real redis-server: the memory store's cases, and two limiters (as in
two EPP processes) sharing one budget. Fails (never skips) when redis-server is missing."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.flowcontrol.ratelimit import RedisLimitStore, TenantLimiter
from epp.flowcontrol.tenants import Tenant
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError
from tests.helpers.procs import free_port, running, wait_port
from tests.unit.flowcontrol.limit_cases import CASES, LimitCase

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is required: apt-get install -y redis-server"
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]
    with running(args, workdir / "redis.log"):
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_redis_store(redis_url: str, case: LimitCase) -> None:
    async def scenario() -> None:
        store = RedisLimitStore(redis_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}:")
        try:
            await case(store)
        finally:
            await store.close()
    asyncio.run(scenario())


def test_two_processes_share_one_budget(redis_url: str) -> None:
    async def scenario() -> None:
        prefix = f"shared-{uuid.uuid4().hex[:8]}:"
        a = TenantLimiter(RedisLimitStore(redis_url, key_prefix=prefix))
        b = TenantLimiter(RedisLimitStore(redis_url, key_prefix=prefix))
        tenant = Tenant("team", requests_per_minute=10)
        req = LLMRequest(request_id="r", model="m", target_model="m", prompt="hi")
        results = await asyncio.gather(*(
            (a if i % 2 else b).admit(tenant, req) for i in range(16)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, RequestError)]
        assert len(refused) == 6 and all(r.status == 429 for r in refused)  # 10 admitted in total
        for limiter in (a, b):
            await limiter.store.close()
    asyncio.run(scenario())
