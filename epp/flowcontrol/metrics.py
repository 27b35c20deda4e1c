"""Flow-control metrics with GIE v1.5's names (pkg/epp/metrics/metrics.go) plus the outcome
counter GIE does not have.

GIE names (same labels):
- inference_extension_flow_control_request_queue_duration_seconds
  {fairness_id, priority, outcome, inference_pool, model_name, target_model_name}
- inference_extension_flow_control_queue_size / _queue_bytes
  {fairness_id, priority, inference_pool, model_name, target_model_name}
- inference_extension_flow_control_pool_saturation {inference_pool}
Ours:
- inference_extension_flow_control_requests_total {priority, outcome}: Dispatched (also the
  requests that never waited), RejectedCapacity, EvictedTTL, EvictedContextCancelled,
  Displaced, EvictedInFlight, RejectedNoEndpoints, EvictedNoEndpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0, 60.0)

DISPATCHED = "Dispatched"
REJECTED_CAPACITY = "RejectedCapacity"
EVICTED_TTL = "EvictedTTL"
EVICTED_CANCELLED = "EvictedContextCancelled"
DISPLACED = "Displaced"
EVICTED_INFLIGHT = "EvictedInFlight"
# llm-d-router QueueOutcome names for the empty-pool regime (noEndpointRequestTTL).
REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"


class FlowControlMetrics:
    def __init__(self, registry: CollectorRegistry | None, pool_name: str = "") -> None:
        kw: dict[str, Any] = {"registry": registry}
        self.pool = pool_name
        self.queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome).",
            ["fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name"],
            buckets=QUEUE_BUCKETS, **kw)
        self.queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Current number of requests actively held in the Flow Control queue.",
            ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"], **kw)
        self.queue_bytes = Gauge(
            "inference_extension_flow_control_queue_bytes",
            "Current total size in bytes of requests actively held in the Flow Control queue.",
            ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"], **kw)
        # Written on every request: plain numbers (no lock, no allocation), exported at scrape
        # time by _Collector below.
        self.saturation = 0.0
        self.outcomes: dict[tuple[int, str], int] = {}
        if registry is not None:
            registry.register(_Collector(self))

    def set_pool(self, pool_name: str) -> None:
        """The pool's name once the endpoint source has read it (labels of new series)."""
        self.pool = pool_name

    def count(self, priority: int, outcome: str) -> None:
        key = (priority, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def gauges(self, fairness_id: str, priority: int, model: str, target: str) -> tuple[Any, Any]:
        labels = (fairness_id, str(priority), self.pool, model, target)
        return self.queue_size.labels(*labels), self.queue_bytes.labels(*labels)

    def waited(self, fairness_id: str, priority: int, outcome: str, model: str, target: str,
               seconds: float) -> None:
        self.queue_duration.labels(fairness_id, str(priority), outcome, self.pool, model, target).observe(seconds)


class _Collector(Collector):
    def __init__(self, metrics: FlowControlMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        sat = GaugeMetricFamily(
            "inference_extension_flow_control_pool_saturation",
            "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
            labels=["inference_pool"])
        sat.add_metric([self.m.pool], self.m.saturation)
        yield sat
        outcomes = CounterMetricFamily(
            "inference_extension_flow_control_requests",
            "Requests that went through the Flow Control layer, by final outcome.",
            labels=["priority", "outcome"])
        for (priority, outcome), n in sorted(self.m.outcomes.items()):
            outcomes.add_metric([str(priority), outcome], n)
        yield outcomes
