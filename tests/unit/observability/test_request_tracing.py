"""Request tracing: settings as the reference EPP reads them, decisions unchanged by tracing,
and spans exported over real OTLP/gRPC to a collector (opentelemetry-proto's own service)."""

from __future__ import annotations

import json
import random
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.observability.request_tracing import RequestTracing, tracing_config_from_env
from epp.observability.tracing import TracingConfig, setup_tracing
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest
from tests.unit.scheduling.sched_fakes import pool


def test_settings_follow_the_reference_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
                "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg = tracing_config_from_env(False)
    assert (cfg.enabled, cfg.exporter, cfg.sample_ratio) == (False, "console", 0.1)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "epp-a")
    cfg = tracing_config_from_env(True)
    assert (cfg.exporter, cfg.sample_ratio, cfg.otlp_endpoint, cfg.service_name) == (
        "otlp", 0.5, "http://127.0.0.1:4317", "epp-a")
    # Flags win over the environment.
    cfg = tracing_config_from_env(True, "console", "http://127.0.0.1:1", 1.0)
    assert (cfg.exporter, cfg.sample_ratio, cfg.otlp_endpoint) == ("console", 1.0, "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    with pytest.raises(ValueError, match="parentbased_traceidratio"):
        tracing_config_from_env(True)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "half")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing_config_from_env(True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tracing_config_from_env(True, ratio=2.0)


def test_otlp_without_a_collector_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match="needs a collector"):
        setup_tracing(TracingConfig(enabled=True, exporter="otlp"))


def _request(i: int, prompt: str) -> LLMRequest:
    return LLMRequest(request_id=f"r{i}", model="m", target_model="m", prompt=prompt, max_tokens=8)


# Deterministic scorers only (the default's prefill-load-scorer decays with wall time).
CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""


def test_traced_scheduling_picks_exactly_what_untraced_scheduling_picks(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    exporter = InMemorySpanExporter()
    provider = setup_tracing(TracingConfig(enabled=True, exporter="none"), [exporter])
    assert provider is not None
    tracing = RequestTracing(provider, pool="p")
    prompts = [f"shared system prompt {i % 3} " * 20 + f"question {i}" for i in range(40)]
    picks: list[list[str]] = []
    for traced in (False, True):
        ctx = PluginContext(Datastore(), source="test")
        sched = load_scheduler_config(config, ctx).scheduler
        sched.profiles["default"].picker.rng = random.Random(7)  # type: ignore[attr-defined]
        endpoints = pool(4)
        for i, ep in enumerate(endpoints):
            ep.metrics.waiting_queue_size = i % 2
            ep.metrics.kv_cache_usage = 0.1 * i
        out: list[str] = []
        for i, prompt in enumerate(prompts):
            request = _request(i, prompt)
            if traced:
                spans = tracing.start({}, request.request_id, "/v1/completions")
                result, state = tracing.schedule(spans, sched, request, endpoints)
                tracing.end(spans, 200)
            else:
                result, state = sched.schedule(request, endpoints)
            sched.pre_request(state, request, result)
            assert result.primary is not None
            out.append(result.primary.targets[0].name)
        picks.append(out)
    assert picks[0] == picks[1]
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"gateway.request", "gateway.admission", "gateway.request_orchestration",
            "run_scheduler_profile", "pick_endpoints"} <= names, names
    assert len([s for s in exporter.get_finished_spans() if s.name == "gateway.request"]) == 40


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_collector_over_grpc() -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        provider = setup_tracing(TracingConfig(enabled=True, exporter="otlp", sample_ratio=1.0,
                                               service_name="epp-otlp-test",
                                               otlp_endpoint=f"http://127.0.0.1:{port}"))
        assert provider is not None
        tracing = RequestTracing(provider, pool="pool-a")
        spans = tracing.start({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                              "rid-otlp", "/v1/completions")
        tracing.end(spans, 200)
        provider.shutdown()  # flushes the batch processor
    finally:
        server.stop(0)
    exported = [(rs, span) for req in collector.requests for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]
    names = {span.name for _, span in exported}
    assert "gateway.request" in names
    rs, span = next((rs, s) for rs, s in exported if s.name == "gateway.request")
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
    assert service == "epp-otlp-test"
    attrs = {a.key: json.loads(json.dumps(a.value.string_value or a.value.int_value)) for a in span.attributes}
    assert attrs["llm_d.epp.pool"] == "pool-a" and attrs["http.response.status_code"] == 200
