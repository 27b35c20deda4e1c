from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from epp.datastore.datastore import Datastore, PoolSpec
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.observability.exposition import HttpServer
from epp.observability.grpc_health import EXT_PROC_SERVICE, GrpcHealthReporter
from epp.observability.health import ReadinessProbe, health_app
from epp.observability.logging import bind_request_id, configure_logging
from epp.observability.tracing import TracingConfig, setup_tracing, tracer


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[Datastore, ReadinessProbe, HttpServer]]:
    ds = Datastore()
    probe = ReadinessProbe(ds)
    server = HttpServer(health_app(probe), "127.0.0.1", 0)
    await server.start()
    yield ds, probe, server
    await server.stop()


async def test_healthz_and_readyz_states(health_server: tuple[Datastore, ReadinessProbe, HttpServer]) -> None:
    ds, probe, server = health_server
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}

        resp = await client.get("/readyz")
        assert resp.status_code == 503
        body = resp.json()
        assert body["ready"] is False
        assert body["reasons"] == ["InferencePool not synced yet"]
        assert body["warning"] == "no endpoints match the pool selector"

        # Ready means "the EPP can answer": an unhealthy (stale) pod does not change it,
        # the body only reports it (issue 17: stale scrapes must not take every replica out).
        ds.set_pool(PoolSpec(name="pool", selector={"app": "x"}))
        ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", 8000))
        ds.set_health(ep, False)
        resp = await client.get("/readyz")
        body = resp.json()
        assert resp.status_code == 200 and body["ready"] is True and body["reasons"] == []
        assert body["warning"] == "0 of 1 endpoints healthy (not ready or metrics stale)"
        assert body["pool"] == "default/pool" and body["endpoints"] == 1
        assert body["healthy_endpoints"] == 0

        ds.set_health(ep, True)
        resp = await client.get("/readyz")
        assert resp.status_code == 200 and resp.json()["healthy_endpoints"] == 1
        assert "warning" not in resp.json()

        # A source that has not listed its pods yet (Kubernetes mode) is not ready.
        probe.source_synced = lambda: False
        resp = await client.get("/readyz")
        assert resp.status_code == 503 and resp.json()["reasons"] == ["pods and objectives not listed yet"]
        probe.source_synced = None

        probe.draining = True
        resp = await client.get("/readyz")
        assert resp.status_code == 503 and resp.json()["reasons"] == ["shutting down (draining)"]
        assert (await client.get("/healthz")).status_code == 200  # alive while draining


async def test_grpc_health_follows_readiness() -> None:
    ds = Datastore()
    probe = ReadinessProbe(ds)
    reporter = GrpcHealthReporter(probe, interval=0.02)
    server = grpc.aio.server()
    reporter.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await reporter.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> int:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                return int(resp.status)

            serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            # The reference EPP's service names: liveness is up as soon as the process is.
            assert await status(EXT_PROC_SERVICE) == not_serving
            assert await status("readiness") == not_serving
            assert await status("liveness") == serving
            ds.set_pool(PoolSpec(name="pool"))
            assert await reporter.update() is True  # ready without any pod: it can answer
            ep = Endpoint("pod-a", "127.0.0.1", 8000)
            ep.metrics = EndpointMetrics(updated_at=time.monotonic())
            ds.upsert_endpoint(ep)
            assert await reporter.update() is True
            for service in (EXT_PROC_SERVICE, "", "readiness", "liveness"):
                assert await status(service) == serving
            probe.draining = True
            assert await reporter.update() is False
            assert await status("readiness") == not_serving
            assert await status("liveness") == serving  # not restarted while draining
            await reporter.stop()
            assert await status("") == not_serving
    finally:
        await reporter.stop()
        await server.stop(None)


def test_json_logs_carry_request_id_and_extras() -> None:
    stream = io.StringIO()
    handler = configure_logging("debug", "json", stream)
    try:
        log = logging.getLogger("epp.test")
        with bind_request_id("req-42"):
            log.info("picked endpoint", extra={"endpoint": "127.0.0.1:8000", "score": 0.82})
        log.debug("no request")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        first = lines[0]
        assert (first["msg"], first["level"], first["logger"]) == ("picked endpoint", "info", "epp.test")
        assert first["request_id"] == "req-42"
        assert first["endpoint"] == "127.0.0.1:8000" and first["score"] == 0.82
        assert first["ts"].endswith("Z") and "T" in first["ts"]
        assert "request_id" not in lines[1]
        assert "ValueError: bad" in lines[2]["exc"]
    finally:
        logging.getLogger().removeHandler(handler)


def test_text_logs_and_level_validation() -> None:
    stream = io.StringIO()
    handler = configure_logging("warning", "text", stream)
    try:
        log = logging.getLogger("epp.text")
        log.info("hidden")
        with bind_request_id("r1"):
            log.warning("endpoint unhealthy", extra={"endpoint": "pod-a"})
        out = stream.getvalue()
        assert "hidden" not in out
        assert "WARNING epp.text [r1] endpoint unhealthy endpoint=pod-a" in out
        # reconfiguring replaces our handler instead of stacking a second one
        handler2 = configure_logging("info", "json", stream)
        assert handler not in logging.getLogger().handlers and handler2 in logging.getLogger().handlers
        handler = handler2
    finally:
        logging.getLogger().removeHandler(handler)
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


def test_tracing_off_by_default_and_records_spans_when_on() -> None:
    assert setup_tracing(TracingConfig()) is None
    with tracer(None).start_as_current_span("noop") as span:
        assert not span.is_recording()
    exporter = InMemorySpanExporter()
    provider = setup_tracing(TracingConfig(enabled=True, exporter="none"), extra_exporters=[exporter])
    assert provider is not None
    with tracer(provider).start_as_current_span("schedule", attributes={"model": "m"}):
        pass
    provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "schedule" and span.attributes is not None and span.attributes["model"] == "m"
    with pytest.raises(ValueError, match="sample ratio"):
        setup_tracing(TracingConfig(enabled=True, sample_ratio=2.0))
