"""Optional OpenTelemetry tracing (off by default).

`setup_tracing(TracingConfig(enabled=True, exporter="console"))` builds a TracerProvider
that the caller owns (not installed globally unless `set_global=True`), so tests and
several servers in one process do not fight over OpenTelemetry's global provider. When
disabled, `tracer()` returns OpenTelemetry's no-op tracer and spans cost next to nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

Exporter = Literal["none", "console", "otlp"]


@dataclass(slots=True)
class TracingConfig:
    enabled: bool = False
    service_name: str = "llm-epp"
    exporter: Exporter = "console"
    sample_ratio: float = 1.0
    otlp_endpoint: str = ""  # e.g. http://127.0.0.1:4317 (OTLP over gRPC)

    def validate(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"tracing sample ratio must be in [0, 1], got {self.sample_ratio}")
        if self.exporter not in ("none", "console", "otlp"):
            raise ValueError(f"unknown tracing exporter {self.exporter!r} (use none, console or otlp)")


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # An http:// endpoint means plaintext gRPC (a collector beside the EPP); https:// and
    # the OTEL_EXPORTER_OTLP_* variables (certificates, headers) are the exporter's own.
    insecure = True if endpoint.startswith("http://") else None
    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint or None, insecure=insecure)
    return exporter


def setup_tracing(config: TracingConfig, extra_exporters: Sequence[SpanExporter] = (),
                  set_global: bool = False) -> TracerProvider | None:
    """A configured TracerProvider, or None when tracing is disabled."""
    config.validate()
    if not config.enabled:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBasedTraceIdRatio(config.sample_ratio))
    if config.exporter == "otlp" and not config.otlp_endpoint and not os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT") and not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        raise ValueError("tracing exporter 'otlp' needs a collector: --otlp-endpoint or "
                         "OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317)")
    if config.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif config.exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(config.otlp_endpoint)))
    for exporter in extra_exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def tracer(provider: TracerProvider | None, name: str = "epp") -> trace.Tracer:
    """A tracer from `provider`, or the no-op tracer when tracing is off."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(name)
