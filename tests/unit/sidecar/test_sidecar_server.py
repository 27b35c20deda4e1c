"""The sidecar between stand-in prefill/decode engines, all real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from epp.sidecar.server import SidecarConfig, SidecarServer
from tests.helpers.procs import free_port
from tests.unit.sidecar.stub_engines import PREFILL_KV_PARAMS, StubEngine, serving

PROMPT = {"model": "stub-model", "prompt": "a long prompt " * 50, "max_tokens": 16, "temperature": 0}


@dataclass
class Rig:
    prefill: StubEngine
    decode: StubEngine
    prefill_hostport: str
    sidecar: SidecarServer
    client: httpx.AsyncClient

    def metric(self, name: str, **labels: str) -> float:
        value = self.sidecar.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def _rig(stack: AsyncExitStack, **config: Any) -> Rig:
    prefill, decode = StubEngine("prefill"), StubEngine("decode")
    prefill_port = await stack.enter_async_context(serving(prefill.app()))
    decode_port = await stack.enter_async_context(serving(decode.app()))
    config.setdefault("allowed_prefill_targets", frozenset({f"127.0.0.1:{prefill_port}"}))
    sidecar = SidecarServer(SidecarConfig(decoder_url=f"http://127.0.0.1:{decode_port}", **config))
    sidecar_port = await stack.enter_async_context(serving(sidecar.runner()))
    client = await stack.enter_async_context(
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sidecar_port}", timeout=10.0)
    )
    return Rig(prefill, decode, f"127.0.0.1:{prefill_port}", sidecar, client)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with AsyncExitStack() as stack:
        yield await _rig(stack)


async def test_without_header_the_request_passes_through_unchanged(rig: Rig) -> None:
    raw = json.dumps(PROMPT).encode()
    r = await rig.client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "from-decode"
    assert r.headers["x-engine"] == "decode" and r.headers["x-request-id"]
    assert rig.prefill.received == [] and rig.decode.received == [PROMPT]
    assert rig.metric("epp_sidecar_requests_total", mode="passthrough") == 1


async def test_prefill_then_decode_with_nixlv2_params(rig: Rig) -> None:
    r = await rig.client.post(
        "/v1/completions", json={**PROMPT, "stream_options": {"include_usage": True}},
        headers={"x-prefiller-host-port": rig.prefill_hostport, "x-request-id": "req-42"},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "from-decode"
    [prefill_req] = rig.prefill.received
    assert prefill_req["max_tokens"] == 1 and prefill_req["stream"] is False
    assert "stream_options" not in prefill_req
    assert prefill_req["kv_transfer_params"]["do_remote_decode"] is True
    assert prefill_req["kv_transfer_params"]["do_remote_prefill"] is False
    [decode_req] = rig.decode.received
    assert decode_req["max_tokens"] == 16 and decode_req["stream_options"] == {"include_usage": True}
    assert decode_req["kv_transfer_params"] == PREFILL_KV_PARAMS
    # Both legs share the request id; the routing header goes to neither engine.
    for headers in (rig.prefill.headers[0], rig.decode.headers[0]):
        assert {k.lower(): v for k, v in headers.items()}["x-request-id"] == "req-42"
        assert "x-prefiller-host-port" not in {k.lower() for k in headers}
    assert rig.metric("epp_sidecar_requests_total", mode="disaggregated") == 1
    assert rig.metric("epp_sidecar_prefill_duration_seconds_count") == 1


async def test_chat_completions_stream_through_the_sidecar(rig: Rig) -> None:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi " * 100}],
            "stream": True, "max_completion_tokens": 32}
    headers = {"x-prefiller-host-port": f"http://{rig.prefill_hostport}"}  # legacy URL form
    async with rig.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 10)
        # The engine holds the rest of the stream until the first event reached the client:
        # a sidecar that buffered the answer would never get here.
        assert first == 'data: {"choices":[{"text":"first"}]}'
        rig.decode.release_stream.set()
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]" and len(rest) == 4
    assert rig.prefill.received[0]["max_completion_tokens"] == 1
    assert rig.prefill.received[0]["stream"] is False
    assert rig.decode.received[0]["stream"] is True
    assert rig.decode.received[0]["max_completion_tokens"] == 32


async def test_client_disconnect_aborts_the_decoder_request(rig: Rig) -> None:
    body = {**PROMPT, "stream": True}
    headers = {"x-prefiller-host-port": rig.prefill_hostport}
    async with rig.client.stream("POST", "/v1/completions", json=body, headers=headers) as r:
        await asyncio.wait_for(anext(r.aiter_lines()), 10)
    # Leaving the block closed the client connection mid-stream; the sidecar must drop its
    # decoder connection too, so the engine's handler is cancelled (vLLM aborts the request).
    await asyncio.wait_for(rig.decode.cancelled.wait(), 10)


async def test_prefiller_down_falls_back_to_local_prefill() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with AsyncExitStack() as stack:
        rig = await _rig(stack, allowed_prefill_targets=frozenset({dead}))
        await _prefiller_down_falls_back(rig, dead)


async def _prefiller_down_falls_back(rig: Rig, dead: str) -> None:
    r = await rig.client.post("/v1/completions", json=PROMPT, headers={"x-prefiller-host-port": dead})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "from-decode"
    assert rig.decode.received == [PROMPT]  # the original request, no kv_transfer_params
    assert rig.metric("epp_sidecar_prefill_errors_total", reason="connect") == 1
    assert rig.metric("epp_sidecar_requests_total", mode="fallback") == 1


@pytest.mark.parametrize(
    ("knob", "reason"), [("fail_status", "status"), ("omit_kv_params", "missing-kv-transfer-params")]
)
async def test_bad_prefill_answer_falls_back(rig: Rig, knob: str, reason: str) -> None:
    setattr(rig.prefill, knob, 500 if knob == "fail_status" else True)
    r = await rig.client.post(
        "/v1/completions", json=PROMPT, headers={"x-prefiller-host-port": rig.prefill_hostport}
    )
    assert r.status_code == 200
    assert len(rig.prefill.received) == 1 and rig.decode.received == [PROMPT]
    assert rig.metric("epp_sidecar_prefill_errors_total", reason=reason) == 1


async def test_prefill_timeout_falls_back() -> None:
    async with AsyncExitStack() as stack:
        rig = await _rig(stack, prefill_timeout=0.2)
        rig.prefill.hang = True
        r = await rig.client.post(
            "/v1/completions", json=PROMPT, headers={"x-prefiller-host-port": rig.prefill_hostport}
        )
        rig.prefill.unhang.set()
        assert r.status_code == 200 and rig.decode.received == [PROMPT]
        assert rig.metric("epp_sidecar_prefill_errors_total", reason="timeout") == 1


async def test_fail_mode_returns_the_prefiller_error() -> None:
    async with AsyncExitStack() as stack:
        rig = await _rig(stack, on_prefill_error="fail")
        rig.prefill.fail_status = 503
        r = await rig.client.post(
            "/v1/completions", json=PROMPT, headers={"x-prefiller-host-port": rig.prefill_hostport}
        )
        assert r.status_code == 503 and r.json()["error"]["message"] == "engine failure"
        assert rig.decode.received == []
        assert rig.metric("epp_sidecar_requests_total", mode="failed") == 1


async def test_prefill_target_outside_allowlist_is_forbidden() -> None:
    async with AsyncExitStack() as stack:
        rig = await _rig(stack, allowed_prefill_targets=frozenset({"10.1.2.3"}))
        r = await rig.client.post(
            "/v1/completions", json=PROMPT, headers={"x-prefiller-host-port": rig.prefill_hostport}
        )
        assert r.status_code == 403 and rig.prefill.received == [] and rig.decode.received == []


async def test_invalid_json_with_prefill_header_is_a_400(rig: Rig) -> None:
    r = await rig.client.post(
        "/v1/completions", content=b"{not json", headers={"x-prefiller-host-port": rig.prefill_hostport}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


async def test_models_health_and_metrics_reach_the_decoder(rig: Rig) -> None:
    models = await rig.client.get("/v1/models")
    assert models.json()["data"][0]["id"] == "stub-model"
    assert (await rig.client.get("/health")).status_code == 200
    await rig.client.post("/v1/completions", json=PROMPT)
    metrics = (await rig.client.get("/metrics")).text
    assert "vllm:num_requests_waiting 2.0" in metrics  # the engine's, for the EPP scraper
    assert 'epp_sidecar_requests_total{mode="passthrough"} 1.0' in metrics
    own = (await rig.client.get("/sidecar/metrics")).text
    assert "vllm:" not in own and "epp_sidecar_requests_total" in own


async def test_decoder_down_is_a_502() -> None:
    sidecar = SidecarServer(SidecarConfig(decoder_url=f"http://127.0.0.1:{free_port()}"))
    async with serving(sidecar.app) as port, httpx.AsyncClient() as client:
        r = await client.post(f"http://127.0.0.1:{port}/v1/completions", json=PROMPT)
        assert r.status_code == 502 and r.json()["error"]["type"] == "bad_gateway"
        assert sidecar.metrics.registry.get_sample_value("epp_sidecar_decoder_errors_total") == 1


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="--decoder-url must be an http"):
        SidecarServer(SidecarConfig(decoder_url="127.0.0.1:8200"))
    with pytest.raises(ValueError, match="unknown connector 'nixl3'"):
        SidecarServer(SidecarConfig(connector="nixl3"))
