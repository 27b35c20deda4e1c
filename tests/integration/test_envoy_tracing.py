"""Tracing through the real Envoy: the client's trace continues in the EPP's spans and on
the pod. The EPP runs in this process (so its spans land in an in-memory exporter); Envoy and
the simulated pods are real processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from epp.localstack.stack import REPO, LocalStack
from epp.observability.tracing import TracingConfig
from epp.server.app import EPPServer, ServeOptions
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class TracedStack:
    stack: LocalStack
    exporter: InMemorySpanExporter


@pytest.fixture(scope="module")
def traced(stack_factory: StackFactory) -> Iterator[TracedStack]:
    stack = stack_factory(pods=2, time_scale=0.1, kv_events=False, with_epp=False)
    cfg, run = stack.cfg, stack.cfg.run_dir
    exporter = InMemorySpanExporter()
    opts = ServeOptions(
        host="127.0.0.1", grpc_port=cfg.grpc_port, health_port=cfg.health_port,
        metrics_port=cfg.metrics_port, pool_file=run / "inferencepool.yaml",
        endpoints_file=run / "endpoints.yaml",
        objectives_files=[REPO / "deploy/local/objectives.yaml"],
        tracing=TracingConfig(enabled=True, exporter="none", sample_ratio=1.0),
        span_exporters=[exporter], shutdown_delay_s=0.0, shutdown_grace_s=1.0)
    server = EPPServer(opts)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.run(),), daemon=True)
    thread.start()
    try:
        stack.wait_envoy_hosts_healthy(30)
        yield TracedStack(stack, exporter)
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(15)


def _wait_spans(exporter: InMemorySpanExporter, trace_id: int, name: str, count: int = 1) -> list[ReadableSpan]:
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans()
                 if s.context is not None and s.context.trace_id == trace_id]
        if sum(1 for s in spans if s.name == name) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_one_trace_runs_from_client_through_the_epp_to_the_pod(traced: TracedStack) -> None:
    stack, exporter = traced.stack, traced.exporter
    body = {"model": MODEL, "prompt": "tracing " + "the quick brown fox " * 40, "max_tokens": 3}
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    with httpx.Client(timeout=30, trust_env=False) as client:
        first = client.post(f"{stack.url}/v1/completions", json=body, headers=headers)
        assert first.status_code == 200, first.text
        second = client.post(f"{stack.url}/v1/completions", json=body, headers=headers)
        assert second.status_code == 200, second.text
        spans = _wait_spans(exporter, int(TRACE_ID, 16), "gateway.request", 2)
        requests = sorted((s for s in spans if s.name == "gateway.request"), key=lambda s: s.start_time or 0)
        assert len(requests) == 2, [s.name for s in spans]
        req = requests[1]
        # The EPP's span is the client's span's child: one trace, not two.
        assert req.parent is not None and req.parent.span_id == int(CLIENT_SPAN, 16)
        assert req.kind.name == "SERVER"
        attrs = dict(req.attributes or {})
        assert attrs["gen_ai.request.model"] == MODEL
        assert attrs["target_model"] == MODEL
        picked = attrs["llm_d.epp.picked_endpoint"]
        assert picked == f"127.0.0.1:{_port_of(stack, second.headers['x-sim-pod'])}"
        # The same prompt twice: the second pick matched the first one's prefix.
        assert attrs["llm_d.epp.prefix_cache.hit"] is True
        assert int(attrs["llm_d.epp.prefix_cache.matched_tokens"]) > 0  # type: ignore[arg-type]
        assert any(k.startswith("llm_d.epp.scores.") for k in attrs), attrs

        # Children of the request span: admission, orchestration -> profile -> scorers, pick.
        by_id = {s.context.span_id: s for s in spans if s.context is not None}
        children = [s for s in spans if s.parent is not None and s.parent.span_id == req.context.span_id]  # type: ignore[union-attr]
        assert {s.name for s in children} == {"gateway.admission", "gateway.request_orchestration"}
        orchestration = next(s for s in children if s.name == "gateway.request_orchestration")
        profiles = [s for s in spans if s.name == "run_scheduler_profile"
                    and s.parent is not None and s.parent.span_id == orchestration.context.span_id]  # type: ignore[union-attr]
        assert len(profiles) == 1
        assert (profiles[0].attributes or {})["llm_d.epp.scheduling.profile.name"]
        inner = {s.name for s in spans if s.parent is not None
                 and by_id.get(s.parent.span_id) is profiles[0]}
        assert "pick_endpoints" in inner
        assert {"llm_d.epp.scorer.prefix-cache-scorer", "llm_d.epp.scorer.active-request-scorer"} <= inner, inner

        # The pod got a traceparent naming the EPP's request span in the client's trace.
        pod = next(p for p in stack.pods if p.name == second.headers["x-sim-pod"])
        state = client.get(f"{stack.pod_url(pod)}/sim/state").json()
        expected = f"00-{TRACE_ID}-{req.context.span_id:016x}-01"  # type: ignore[union-attr]
        assert expected in state["traceparents"], state["traceparents"]


def test_a_request_without_traceparent_starts_a_trace_and_rejections_are_spans_too(traced: TracedStack) -> None:
    stack, exporter = traced.stack, traced.exporter
    exporter.clear()
    with httpx.Client(timeout=30, trust_env=False) as client:
        ok = client.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "root", "max_tokens": 1})
        assert ok.status_code == 200
        bad = client.post(f"{stack.url}/v1/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
        assert bad.status_code == 400
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        roots = [s for s in exporter.get_finished_spans() if s.name == "gateway.request"]
        if len(roots) >= 2:
            break
        time.sleep(0.05)
    assert len(roots) == 2
    assert all(s.parent is None for s in roots)  # new traces
    failed = [s for s in roots if (s.attributes or {}).get("http.response.status_code") == 400]
    assert len(failed) == 1 and failed[0].status.status_code.name == "ERROR"


def _port_of(stack: LocalStack, pod_name: str) -> int:
    return next(p.serving_port for p in stack.pods if p.name == pod_name)
