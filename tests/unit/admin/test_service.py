"""The admin gRPC server on loopback: GetPool, WatchDecisions, the bearer token, and the
x-epp-explain debug header of the ext_proc handler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from epp.admin.options import AdminConfigError, AdminOptions
from epp.admin.proto import pb, pb_grpc
from epp.admin.server import AdminServer
from epp.cli import main
from tests.unit.admin.harness import PD_CONFIG, Rig, route, set_headers
from tests.unit.admin.harness import rig as make_rig

PROMPT = "Summarise the incident report below and list the follow-up actions. " * 6


async def _server(r: Rig, token: str = "") -> AdminServer:
    server = AdminServer(AdminOptions(host="127.0.0.1", port=0, enabled=True, token=token), r.service.state)
    await server.start()
    return server


async def _stub(server: AdminServer) -> AsyncIterator[object]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.AdminStub(channel)


async def test_get_pool_reports_endpoints_load_roles_and_index() -> None:
    r = make_rig(PD_CONFIG, roles=["prefill", "decode", "decode"])
    eps = r.datastore.endpoints()
    eps[1].metrics.waiting_queue_size, eps[1].metrics.kv_cache_usage = 2, 0.25
    eps[1].metrics.num_gpu_blocks = 500
    eps[2].metrics.updated_at = time.monotonic() - 0.5
    r.datastore.set_health(eps[0], False)
    await route(r, {"model": "m", "prompt": PROMPT, "max_tokens": 8})
    held = r.tracker.dispatch([eps[2]], 100)  # a request still in flight
    server = await _server(r)
    try:
        async for stub in _stub(server):
            snap = await stub.GetPool(pb.GetPoolRequest())  # type: ignore[attr-defined]
    finally:
        await server.stop()
        r.tracker.complete(held)
    by_key = {e.key: e for e in snap.endpoints}
    assert list(by_key) == ["default/pod-0", "default/pod-1", "default/pod-2"]
    assert [by_key[k].role for k in by_key] == ["prefill", "decode", "decode"]
    assert [by_key[k].healthy for k in by_key] == [False, True, True]
    assert by_key["default/pod-1"].metrics.waiting_queue_size == 2
    assert by_key["default/pod-1"].metrics.kv_cache_usage == pytest.approx(0.25)
    assert 0.4 < by_key["default/pod-2"].metrics_age_seconds < 30
    assert by_key["default/pod-2"].inflight == 1 and by_key["default/pod-2"].inflight_tokens == 100
    assert by_key["default/pod-1"].labels == {"llm-d.ai/role": "decode"}
    # The one routed request: counted for the pod it went to, and its prompt's blocks are in
    # the prefix-cache-scorer's LRU for that pod.
    picked = [e for e in snap.endpoints if e.decisions_total == 1]
    assert len(picked) == 1 and snap.decisions.total == 1
    coverage = {(c.source, c.endpoint): c for c in snap.index_coverage}
    mine = coverage[("prefix-cache-scorer/prefix-cache-scorer", picked[0].key)]
    assert mine.blocks == len(PROMPT.encode()) // 64
    assert coverage[("prefix-cache-scorer/prefix-cache-scorer", "default/pod-1")].capacity in (500, 31250)
    assert snap.config_source == str(PD_CONFIG)


async def test_watch_decisions_streams_sampled_real_decisions_with_detail() -> None:
    r = make_rig(pods=3)
    server = await _server(r)
    try:
        async for stub in _stub(server):
            call = stub.WatchDecisions(pb.WatchDecisionsRequest(sample_one_in=2, max_decisions=3))  # type: ignore[attr-defined]
            await _until(lambda: bool(r.explainer.watchers))
            real = []
            for i in range(6):
                responses = await route(r, {"model": "m", "prompt": f"{PROMPT} {i}", "max_tokens": 4},
                                        headers={"x-request-id": f"req-{i}"})
                real.append(next(set_headers(x)["x-gateway-destination-endpoint"] for x in responses
                                 if x.WhichOneof("response") == "request_body"))
            got = [m async for m in call]
        await _until(lambda: not r.explainer.watchers and not r.handler.decisions.active)
    finally:
        await server.stop()
    # One decision in two, the first of each pair, with the real destination and full detail.
    assert [m.decision.request_id for m in got] == ["req-0", "req-2", "req-4"]
    assert [m.decision.target_hostport for m in got] == [real[0], real[2], real[4]]
    d = got[1].decision
    assert not d.dry_run and d.primary_profile == "default"
    assert {s.scorer for e in d.profiles[0].endpoints for s in e.scores} == {
        "prefill-load-scorer", "active-request-scorer", "prefix-cache-scorer"}
    # Same prompt prefix as req-0: the prefix match on req-0's pod is visible.
    same_pod = next(e for e in d.profiles[0].endpoints if e.hostport == real[0])
    assert same_pod.prefix_match_blocks > 0


async def test_watch_filters_by_model_and_endpoint() -> None:
    r = make_rig(pods=2)
    server = await _server(r)
    try:
        async for stub in _stub(server):
            by_model = stub.WatchDecisions(pb.WatchDecisionsRequest(model="wanted", max_decisions=1))  # type: ignore[attr-defined]
            by_pod = stub.WatchDecisions(pb.WatchDecisionsRequest(endpoint="127.0.0.1:8001", max_decisions=1))  # type: ignore[attr-defined]
            await _until(lambda: len(r.explainer.watchers) == 2)
            r.datastore.endpoints()[0].metrics.waiting_queue_size = 50  # everything goes to pod-1
            await route(r, {"model": "other", "prompt": "a"}, headers={"x-request-id": "a"})
            await route(r, {"model": "wanted", "prompt": "b"}, headers={"x-request-id": "b"})
            model_got = [m.decision.request_id async for m in by_model]
            pod_got = [m.decision.request_id async for m in by_pod]
    finally:
        await server.stop()
    assert model_got == ["b"]
    assert pod_got == ["a"]


async def test_token_is_required_and_checked_on_every_rpc() -> None:
    r = make_rig(pods=1)
    server = await _server(r, token="s3cret-token")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AdminStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetPool(pb.GetPoolRequest(), metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Explain(pb.ExplainRequest(body=b"{}"), metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.WatchDecisions(pb.WatchDecisionsRequest(), metadata=metadata):
                        pass
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = (("authorization", "Bearer s3cret-token"),)
            snap = await stub.GetPool(pb.GetPoolRequest(), metadata=ok)
            assert [e.key for e in snap.endpoints] == ["default/pod-0"]
            body = json.dumps({"model": "m", "prompt": "x"}).encode()
            resp = await stub.Explain(pb.ExplainRequest(body=body), metadata=ok)
            assert resp.decision.target == "default/pod-0"
    finally:
        await server.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "epp.example.com"])
def test_non_loopback_address_needs_a_token(host: str) -> None:
    with pytest.raises(AdminConfigError, match="bearer token"):
        AdminOptions(host=host, port=9, enabled=True).validate()
    AdminOptions(host=host, port=9, enabled=True, token="t").validate()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_token(host: str) -> None:
    AdminOptions(host=host, port=9, enabled=True).validate()


def test_epp_serve_refuses_an_exposed_admin_port_without_token(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPP_ADMIN_TOKEN", raising=False)
    rc = main(["serve", "--admin-port", "9", "--admin-host", "0.0.0.0", "--log-format", "text"])
    assert rc == 2
    assert "bearer token" in caplog.text


@pytest.mark.parametrize("enabled", [True, False])
async def test_debug_header_only_when_the_server_allows_it(enabled: bool) -> None:
    r = make_rig(pods=2, explain_header=enabled)
    body = {"model": "m", "prompt": "why here?"}
    asked = await route(r, body, headers={"x-epp-explain": "1"}, response_status=200)
    not_asked = await route(r, body, response_status=200)
    resp_headers = [set_headers(x) for x in asked if x.WhichOneof("response") == "response_headers"]
    assert len(resp_headers) == 1
    if enabled:
        value = resp_headers[0]["x-epp-explain"]
        assert value.startswith("pod=default/pod-") and "profile=default" in value and "scores=" in value
    else:
        assert "x-epp-explain" not in resp_headers[0]  # the client cannot turn it on
    assert all("x-epp-explain" not in set_headers(x) for x in not_asked
               if x.WhichOneof("response") == "response_headers")


async def _until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_decision_rates_since_start_then_over_the_window() -> None:
    from epp.admin.stats import DecisionStatsCollector
    from epp.datastore.endpoint import Endpoint
    from epp.scheduling.types import LLMRequest, ProfileRunResult, SchedulingResult

    stats = DecisionStatsCollector(window_s=5.0)
    t0 = stats._history[0][0]
    a, b = Endpoint("a", "127.0.0.1", 1), Endpoint("b", "127.0.0.1", 2)
    req = LLMRequest("r", "m", "m")

    def decide(ep: Endpoint, n: int) -> None:
        for _ in range(n):
            stats.on_decision(req, SchedulingResult({"p": ProfileRunResult([ep])}, "p"), 0.0)

    decide(a, 20)
    total, per = stats.rates(t0 + 2.0)  # first read: the average since start
    assert total == pytest.approx(10.0) and per == {"default/a": pytest.approx(10.0)}
    decide(b, 30)
    total, per = stats.rates(t0 + 8.0)  # window: the reads at t0 and t0+2 are both older than 5 s
    assert total == pytest.approx(30 / 6.0) and per["default/b"] == pytest.approx(5.0)
    assert per["default/a"] == 0.0
    assert stats.total == 50
