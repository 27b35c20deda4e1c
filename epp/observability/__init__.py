"""The EPP's observability: Prometheus metrics, health/readiness, structured logs, tracing.

grpc_health (grpc.health.v1) is imported from its module directly: it needs the
grpcio-health-checking package.
"""

from epp.observability.exposition import (
    DEFAULT_METRICS_PORT,
    HttpServer,
    ObservabilityServers,
    add_metrics_route,
    metrics_app,
)
from epp.observability.health import (
    DEFAULT_HEALTH_PORT,
    Readiness,
    ReadinessProbe,
    add_health_routes,
    health_app,
)
from epp.observability.logging import REQUEST_ID, bind_request_id, configure_logging
from epp.observability.metrics import EPPMetrics, ModelSeries, PoolCollector
from epp.observability.tracing import TracingConfig, setup_tracing, tracer

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_METRICS_PORT",
    "REQUEST_ID",
    "EPPMetrics",
    "HttpServer",
    "ModelSeries",
    "ObservabilityServers",
    "PoolCollector",
    "Readiness",
    "ReadinessProbe",
    "TracingConfig",
    "add_health_routes",
    "add_metrics_route",
    "bind_request_id",
    "configure_logging",
    "health_app",
    "metrics_app",
    "setup_tracing",
    "tracer",
]
