"""Metrics of disaggregated prefill/decode scheduling (not a plugin; imported by one).

The counters are prometheus_client objects that belong to no registry until the server
registers them: `register_pd_metrics(registry, services)` adds the one `PDMetrics` of the
process (kept in `PluginContext.services` under `PD_METRICS_SERVICE`, so every
pd-profile-handler instance shares it) to the registry the server exposes at /metrics.
Nothing touches prometheus_client's default global registry.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PD_METRICS_SERVICE = "pd.metrics"

# llm-d's decision_type label values.
DECISION_DECODE_ONLY = "decode-only"
DECISION_PREFILL_DECODE = "prefill-decode"

# Why a request that could have been disaggregated was served by its decode pod alone.
SKIP_BELOW_THRESHOLD = "below-threshold"  # few uncached prompt tokens on the decode pod
SKIP_NO_PREFILL_ENDPOINT = "no-prefill-endpoint"  # the prefill profile found no pod
SKIP_SAME_ENDPOINT = "same-endpoint"  # prefill picked the decode pod itself
SKIP_NO_PREFILL_PROFILE = "no-prefill-profile"  # config has no prefill profile
SKIP_PREFILL_BACKLOG = "prefill-backlog"  # the prefill pod has maxPrefillBacklog requests already


class PDMetrics(Collector):
    """P/D counters; a Collector so it can be registered into any CollectorRegistry."""

    def __init__(self) -> None:
        # registry=None: the objects are only exposed through this collector.
        self.decisions = Counter(
            "llm_d_inference_scheduler_pd_decision_total",
            "Total number of P/D disaggregation decisions made (llm-d compatible name)",
            ["decision_type", "model_name"],
            registry=None,
        )
        self.profile_runs = Counter(
            "epp_pd_profile_requests_total",
            "Requests for which the pd-profile-handler ran a scheduling profile",
            ["profile"],
            registry=None,
        )
        self.prefill_skipped = Counter(
            "epp_pd_prefill_skipped_total",
            "Requests served without remote prefill although a prefill profile is configured",
            ["reason"],
            registry=None,
        )
        self.uncached_tokens = Histogram(
            "epp_pd_uncached_prompt_tokens",
            "Prompt tokens not cached on the chosen decode pod, as estimated at decision time",
            buckets=(16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
            registry=None,
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        for metric in (self.decisions, self.profile_runs, self.prefill_skipped, self.uncached_tokens):
            yield from metric.collect()


def pd_metrics(services: MutableMapping[str, Any]) -> PDMetrics:
    """The process's PDMetrics, created in `services` on first use."""
    metrics = services.get(PD_METRICS_SERVICE)
    if metrics is None:
        metrics = services[PD_METRICS_SERVICE] = PDMetrics()
    if not isinstance(metrics, PDMetrics):
        raise TypeError(f"services[{PD_METRICS_SERVICE!r}] holds {type(metrics).__name__}, not PDMetrics")
    return metrics


def register_pd_metrics(registry: CollectorRegistry, services: MutableMapping[str, Any]) -> PDMetrics:
    """Expose the P/D metrics of this process in `registry` (call once per registry)."""
    metrics = pd_metrics(services)
    registry.register(metrics)
    return metrics
