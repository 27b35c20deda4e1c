"""The admin API of a real `epp serve` while traffic flows through the real Envoy.

WatchDecisions streams the live decisions (request id, destination, per-scorer detail) of
the requests we send; each one's destination is the pod that answered (the simulator's
x-sim-pod). GetPool counts them. The x-epp-explain debug header comes back through Envoy
when `--explain-header` is on, and never when it is off, whatever the client sends.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from epp.admin.proto import pb, pb_grpc
from epp.localstack.stack import LocalStack, free_ports
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROMPT = "You are a helpful assistant. Answer briefly and cite sources where possible. " * 4


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, admin_port: int) -> LocalStack:
    # STREAMED response bodies: Envoy sends response headers (the debug header rides on them)
    # and the usage, from which the EPP counts cached prompt tokens (hit rate).
    return stack_factory(pods=3, time_scale=0.1, kv_events=False, response_body_mode="STREAMED",
                         epp_args=["--admin-port", str(admin_port), "--explain-header"])


async def _send(client: httpx.AsyncClient, stack: LocalStack, rid: str, headers: dict[str, str] | None = None
                ) -> httpx.Response:
    r = await client.post(f"{stack.url}/v1/completions", headers={"x-request-id": rid, **(headers or {})},
                          json={"model": MODEL, "prompt": f"{PROMPT} question {rid}", "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r


async def test_watch_decisions_sees_the_traffic_through_envoy(stack: LocalStack, admin_port: int) -> None:
    served: dict[str, str] = {}  # request id -> pod that answered
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel, \
            httpx.AsyncClient(timeout=30, trust_env=False) as client:
        stub = pb_grpc.AdminStub(channel)
        call = stub.WatchDecisions(pb.WatchDecisionsRequest(sample_one_in=1, max_decisions=8))
        got: list[object] = []

        async def read() -> None:
            async for msg in call:
                got.append(msg.decision)

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + 30
        i = 0
        while not reader.done() and time.monotonic() < deadline:  # until 8 decisions streamed
            rid = f"watch-{i}"
            served[rid] = (await _send(client, stack, rid)).headers["x-sim-pod"]
            i += 1
            await asyncio.sleep(0.05)
        await asyncio.wait_for(reader, 10)
        snap = await stub.GetPool(pb.GetPoolRequest())

    assert len(got) == 8
    for d in got:
        assert d.request_id in served, d.request_id  # our requests, ids kept through Envoy
        assert not d.dry_run
        assert d.target.split("/")[-1] == served[d.request_id], (d.target, served[d.request_id])
        profile = d.profiles[0]
        assert {s.scorer for e in profile.endpoints for s in e.scores} == {
            "prefill-load-scorer", "active-request-scorer", "prefix-cache-scorer"}
        assert len(profile.endpoints) == 3 and profile.picked[0] == d.target
    # The watcher started late at worst, so the streamed ids are consecutive sent ids.
    ids = [int(d.request_id.split("-")[1]) for d in got]
    assert ids == list(range(ids[0], ids[0] + 8))

    assert len(snap.endpoints) == 3 and all(e.healthy for e in snap.endpoints)
    assert snap.decisions.total >= len(served)
    assert sum(e.decisions_total for e in snap.endpoints) == snap.decisions.total
    assert all(0 <= e.metrics_age_seconds < 5 for e in snap.endpoints)
    # Responses streamed through the EPP carry usage: the hit rate is known for busy pods.
    assert any(e.prefix_hit_rate >= 0 for e in snap.endpoints if e.decisions_total)


async def test_debug_header_through_envoy(stack: LocalStack) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        asked = await _send(client, stack, "dbg-1", {"x-epp-explain": "1"})
        plain = await _send(client, stack, "dbg-2")
    summary = asked.headers["x-epp-explain"]
    assert summary.startswith(f"pod=default/{asked.headers['x-sim-pod']} profile=default ")
    assert "scores=prefill-load-scorer:" in summary
    assert "x-epp-explain" not in plain.headers


async def test_client_cannot_force_the_debug_header(stack_factory: StackFactory) -> None:
    off = stack_factory(pods=1, time_scale=0.1, kv_events=False, response_body_mode="STREAMED")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        r = await _send(client, off, "dbg-off", {"x-epp-explain": "1"})
    assert "x-epp-explain" not in r.headers
