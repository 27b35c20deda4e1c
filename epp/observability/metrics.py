"""The EPP's own Prometheus metrics, in an explicit CollectorRegistry.

Names follow GIE's EPP (pkg/epp/metrics: `inference_objective_*`, `inference_pool_*`,
`inference_extension_*`; the pre-v1 `inference_model_request_total` is still emitted for
dashboards that use it) plus the names operator guides alert on (`scheduler_*`).

Hot-path cost is kept low: the series updated per request are lock-free families
(epp/observability/fastmetrics.py, same exposition as prometheus_client's classes), their
label children are created once per (model, target) and cached in `ModelSeries` bundles (per
plugin and per profile in dicts), and the pool gauges are not updated per request at all:
the `PoolCollector` computes them from the Datastore when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datastore.datastore import Datastore
from epp.observability.fastmetrics import (
    CounterChild,
    FastCounter,
    FastGauge,
    FastHistogram,
    HistogramChild,
)

# Buckets as in GIE's EPP so that dashboards built for it read the same.
DURATION_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15,
                    20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)
INPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072,
                       262144, 524288, 1048576)
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

OVERFLOW_LABEL = "__other__"


class PoolCollector(Collector):
    """inference_pool_* gauges computed from the Datastore at scrape time.

    Averages are over the healthy (ready, freshly scraped) endpoints, the set the
    scheduler picks from; `ready_pods` counts them.
    """

    def __init__(self, datastore: Datastore, pool_name: str = "") -> None:
        self.datastore = datastore
        self.pool_name = pool_name

    def collect(self) -> Iterator[Metric]:
        ds = self.datastore
        name = self.pool_name or (ds.pool.name if ds.pool is not None else "")
        healthy = ds.healthy_endpoints()
        kv = GaugeMetricFamily("inference_pool_average_kv_cache_utilization",
                               "The average kv cache utilization for an inference server pool.",
                               labels=["name"])
        queue = GaugeMetricFamily("inference_pool_average_queue_size",
                                  "The average number of requests pending in the model server queue.",
                                  labels=["name"])
        per_pod = GaugeMetricFamily("inference_pool_per_pod_queue_size",
                                    "The total number of requests pending in the model server queue for each "
                                    "underlying pod.", labels=["model_server_pod", "name"])
        ready = GaugeMetricFamily("inference_pool_ready_pods",
                                  "The number of ready pods in the inference server pool.", labels=["name"])
        n = len(healthy)
        kv.add_metric([name], sum(e.metrics.kv_cache_usage for e in healthy) / n if n else 0.0)
        queue.add_metric([name], sum(e.metrics.waiting_queue_size for e in healthy) / n if n else 0.0)
        for ep in healthy:
            per_pod.add_metric([ep.name, name], float(ep.metrics.waiting_queue_size))
        ready.add_metric([name], float(n))
        yield kv
        yield queue
        yield per_pod
        yield ready

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values depend on the datastore; nothing to check at registration


class PodScoreCollector(Collector):
    """scheduler_pod_score from a plain dict the hot path updates with one C-level
    `dict.update` per decision: a Gauge child `.set()` per pod (lock, checks) cost ~15% of
    the EPP's per-request CPU at 64 pods (docs/performance.md)."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("scheduler_pod_score", "Latest weighted score of each pod.", labels=["pod"])
        for pod, score in list(self.scores.items()):
            family.add_metric([pod], score)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class ModelSeries:
    """Cached label children of one (model_name, target_model_name) pair."""

    __slots__ = ("_errors", "_metrics", "duration", "input_tokens", "legacy_total", "model",
                 "output_tokens", "request_total", "running", "target")

    def __init__(self, metrics: EPPMetrics, model: str, target: str) -> None:
        self._metrics = metrics
        self.model = model
        self.target = target
        self.request_total = metrics.request_total.labels(model, target)
        self.legacy_total = metrics.legacy_request_total.labels(model, target)
        self.duration = metrics.request_duration.labels(model, target)
        self.input_tokens = metrics.input_tokens.labels(model, target)
        self.output_tokens = metrics.output_tokens.labels(model, target)
        self.running = metrics.running_requests.labels(model)
        self._errors: dict[str, CounterChild] = {}

    def on_request(self) -> None:
        """A request for this model was received (counted and marked running)."""
        self.request_total.inc()
        self.legacy_total.inc()
        self.running.value += 1.0

    def on_done(self, duration: float | None = None, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None:
        """The request finished (successfully or not): no longer running; record what is known."""
        self.running.value -= 1.0
        if duration is not None:
            self.duration.observe(duration)
        if input_tokens is not None:
            self.input_tokens.observe(input_tokens)
        if output_tokens is not None:
            self.output_tokens.observe(output_tokens)

    def on_error(self, error_code: str) -> None:
        child = self._errors.get(error_code)
        if child is None:
            child = self._metrics.request_errors.labels(self.model, self.target, error_code)
            self._errors[error_code] = child
        child.inc()


class EPPMetrics:
    """Typed facade over the EPP's metrics; one instance per process, passed explicitly.

    `max_model_series` bounds label cardinality: model names come from clients, so past the
    bound new names are recorded under model_name="__other__".
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        datastore: Datastore | None = None,
        pool_name: str = "",
        max_model_series: int = 256,
        commit: str = "",
        build_ref: str = "",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        mt = ["model_name", "target_model_name"]
        per_pair = "for each model and target model."
        self.request_total = FastCounter(
            "inference_objective_request_total",
            f"Counter of inference objective requests broken out {per_pair}", mt, registry=r)
        self.legacy_request_total = FastCounter(
            "inference_model_request_total",
            "Deprecated alias of inference_objective_request_total.", mt, registry=r)
        self.request_errors = FastCounter(
            "inference_objective_request_error_total",
            f"Counter of inference objective requests errors broken out {per_pair}",
            [*mt, "error_code"], registry=r)
        self.request_duration = FastHistogram(
            "inference_objective_request_duration_seconds",
            f"Inference objective response latency distribution in seconds {per_pair}",
            mt, buckets=DURATION_BUCKETS, registry=r)
        self.input_tokens = FastHistogram(
            "inference_objective_input_tokens",
            f"Inference objective input token count distribution {per_pair}",
            mt, buckets=INPUT_TOKEN_BUCKETS, registry=r)
        self.output_tokens = FastHistogram(
            "inference_objective_output_tokens",
            f"Inference objective output token count distribution {per_pair}",
            mt, buckets=OUTPUT_TOKEN_BUCKETS, registry=r)
        self.running_requests = FastGauge(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.", ["model_name"], registry=r)
        self.scheduler_e2e = FastHistogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.", buckets=SCHEDULER_BUCKETS, registry=r)
        self.scheduler_attempts = FastCounter(
            "inference_extension_scheduler_attempts_total",
            "Number of scheduling attempts by outcome.", ["status"], registry=r)
        self.plugin_duration = FastHistogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type "
            "and plugin name.",
            ["extension_point", "plugin_type", "plugin_name"], buckets=SCHEDULER_BUCKETS, registry=r)
        info = Gauge(
            "inference_extension_info",
            "General information of the current build of the endpoint picker.",
            ["commit", "build_ref"], registry=r)
        info.labels(commit or "unknown", build_ref or "unknown").set(1)
        # Names from the operator guides (alert: scheduler_decision_duration_seconds p99 > 10 ms).
        self.scheduler_requests = FastCounter(
            "scheduler_requests_total",
            "Scheduling decisions by profile and result.", ["profile", "result"], registry=r)
        self.pod_score = PodScoreCollector()
        r.register(self.pod_score)
        self.cache_hits = FastCounter(
            "scheduler_cache_hits_total",
            "Prefix-cache lookups that found a pod holding the prefix.", registry=r)
        self.cache_misses = FastCounter(
            "scheduler_cache_misses_total",
            "Prefix-cache lookups that found no pod holding the prefix.", registry=r)
        self._cache_hit = self.cache_hits.labels()
        self._cache_miss = self.cache_misses.labels()
        self.decision_duration = FastHistogram(
            "scheduler_decision_duration_seconds",
            "Time to reach a scheduling decision in seconds.", buckets=DECISION_BUCKETS, registry=r)
        if datastore is not None:
            r.register(PoolCollector(datastore, pool_name))

        self.max_model_series = max_model_series
        self._series: dict[tuple[str, str], ModelSeries] = {}
        self._models: set[str] = set()
        self._attempt_ok = self.scheduler_attempts.labels("success")
        self._attempt_fail = self.scheduler_attempts.labels("failure")
        self._e2e = self.scheduler_e2e.labels()
        self._decision = self.decision_duration.labels()
        self._profile_results: dict[tuple[str, str], CounterChild] = {}
        # Plugin timing children by (extension point, plugin type, plugin name): read by
        # MetricsObserver.observe_plugin directly (eight lookups per request).
        self.plugin_children: dict[tuple[str, str, str], HistogramChild] = {}

    # --- per-request, per-model ---------------------------------------------------------
    def series(self, model: str, target: str) -> ModelSeries:
        """Label children for a model pair (cached; bounded, see max_model_series)."""
        key = (model, target)
        s = self._series.get(key)
        if s is None:
            if len(self._series) >= self.max_model_series:
                key = (OVERFLOW_LABEL, OVERFLOW_LABEL)
                s = self._series.get(key)
                if s is not None:
                    return s
            s = ModelSeries(self, *key)
            self._series[key] = s
        return s

    # --- scheduler ----------------------------------------------------------------------
    def observe_decision(self, profile: str, seconds: float, success: bool = True) -> None:
        """One scheduling cycle: GIE's e2e histogram/attempts and the operator-guide names."""
        self._e2e.observe(seconds)
        self._decision.observe(seconds)
        (self._attempt_ok if success else self._attempt_fail).value += 1.0
        result = "success" if success else "failure"
        child = self._profile_results.get((profile, result))
        if child is None:
            child = self.scheduler_requests.labels(profile, result)
            self._profile_results[(profile, result)] = child
        child.value += 1.0

    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, seconds: float
    ) -> None:
        key = (extension_point, plugin_type, plugin_name)
        child = self.plugin_children.get(key)
        if child is None:
            child = self.plugin_child(key)
        child.observe(seconds)

    def plugin_child(self, key: tuple[str, str, str]) -> HistogramChild:
        child = self.plugin_children[key] = self.plugin_duration.labels(*key)
        return child

    def set_pod_scores(self, scores: Mapping[str, float]) -> None:
        """Latest score per pod name (e.g. ProfileRunResult.scores keyed by endpoint key)."""
        self.pod_score.scores.update(scores)

    def forget_pod(self, pod: str) -> None:
        """Drop a removed pod's score series so it does not linger in the exposition."""
        self.pod_score.scores.pop(pod, None)

    def prefix_cache_lookup(self, hit: bool) -> None:
        (self._cache_hit if hit else self._cache_miss).value += 1.0
