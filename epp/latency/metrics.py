"""Prometheus metrics of predicted-latency routing.

Names and labels of the reference where it has them (llm-d/llm-d-router
pkg/epp/framework/plugins/requestcontrol/dataproducer/predictedlatency/metrics.go, GIE's
`inference_objective_*` family, labels model_name / target_model_name):

    inference_objective_request_ttft_seconds                  observed TTFT
    inference_objective_request_predicted_ttft_seconds        TTFT predicted for the chosen pod
    inference_objective_request_ttft_prediction_duration_seconds  time to predict one decision
                                                              (TTFT and TPOT of every candidate)
    inference_objective_request_tpot_seconds                  observed TPOT
    inference_objective_request_predicted_tpot_seconds        TPOT predicted for the chosen pod
    inference_objective_request_slo_violation_total{type}     requests over their ttft / tpot SLO

The reference has no names for these; ours:

    epp_latency_prediction_error_ratio{type,pod}   |predicted - actual| / actual per observation
    epp_latency_training_lag_seconds               age of the oldest observation not yet in a
                                                   published model (0 when all are)
    epp_latency_training_duration_seconds          time of the last refit (all pods)
    epp_latency_model_trained                      1 once the predictor is used, else 0
    epp_latency_model_samples{type}                observations in the training windows
    epp_latency_slo_requests_total{type}           requests that carried a ttft / tpot SLO
    epp_latency_slo_rejected_total                 sheddable requests refused by the admitter
    epp_latency_pod_speed_ratio{type,pod}          how many times slower than the pooled model
                                                   the pod's observations ran (1: as fast)
    epp_latency_pod_step_base_seconds{pod}         the pod's learnt engine step: base time and
    epp_latency_pod_step_seconds_per_ktoken{pod}   time per 1k prefill tokens (only once fitted)

The objects belong to no registry: LatencyRuntime registers this collector into the server's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from epp.latency.predictor import MIN_SPEED_SAMPLES, POOLED, Coefficients
from epp.observability.fastmetrics import FastCounter, FastHistogram, HistogramChild

if TYPE_CHECKING:
    from epp.latency.predictor import LatencyPredictor
    from epp.latency.runtime import RequestRecord
    from epp.scheduling.types import LLMRequest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)
PREDICTION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)
ERROR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
MODEL = ("model_name", "target_model_name")


class LatencyMetrics(Collector):
    def __init__(self, predictor: LatencyPredictor) -> None:
        self.predictor = predictor
        self.ttft = FastHistogram("inference_objective_request_ttft_seconds",
                              "Inference model TTFT distribution in seconds for each model and target model.",
                              MODEL, buckets=LATENCY_BUCKETS, registry=None)
        self.predicted_ttft = FastHistogram(
            "inference_objective_request_predicted_ttft_seconds",
            "Inference model Predicted TTFT distribution in seconds for each model and target model.",
            MODEL, buckets=LATENCY_BUCKETS, registry=None)
        self.prediction_duration = FastHistogram(
            "inference_objective_request_ttft_prediction_duration_seconds",
            "Duration taken to generate TTFT (and TPOT) predictions of every candidate in seconds for "
            "each model and target model.", MODEL, buckets=PREDICTION_BUCKETS, registry=None)
        self.tpot = FastHistogram("inference_objective_request_tpot_seconds",
                              "Inference model TPOT distribution in seconds for each model and target model.",
                              MODEL, buckets=TPOT_BUCKETS, registry=None)
        self.predicted_tpot = FastHistogram(
            "inference_objective_request_predicted_tpot_seconds",
            "Inference model Predicted TPOT distribution in seconds for each model and target model.",
            MODEL, buckets=TPOT_BUCKETS, registry=None)
        self.slo_violations = FastCounter(
            "inference_objective_request_slo_violation",
            "Counter of SLO violations for each model, target model, and violation type.",
            [*MODEL, "type"], registry=None)
        self.prediction_error = FastHistogram(
            "epp_latency_prediction_error_ratio",
            "Absolute prediction error relative to the observed latency, per target (ttft, tpot) and pod.",
            ["type", "pod"], buckets=ERROR_BUCKETS, registry=None)
        self.slo_requests = FastCounter(
            "epp_latency_slo_requests", "Requests that carried a latency SLO, by type (ttft, tpot).",
            ["type"], registry=None)
        self.slo_rejected = FastCounter(
            "epp_latency_slo_rejected",
            "Sheddable requests refused (429) because no pod was predicted to meet their SLO.",
            registry=None)
        self.deferred = FastHistogram(
            "epp_latency_deferral_seconds",
            "How long requests waited in the EPP for the long prefill ahead of them on their pod to "
            "have its first token (predicted-latency-producer deferBehindPrefillTokens).",
            buckets=LATENCY_BUCKETS, registry=None)
        self._children: dict[tuple[str, str, str], HistogramChild] = {}

    # --- recording (hot path: cached label children) ----------------------------------------
    def _child(self, metric: FastHistogram, name: str, model: str, target: str) -> HistogramChild:
        key = (name, model, target)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 4096:  # model names come from clients: bound the series
                model = target = "__other__"
            child = self._children[key] = metric.labels(model, target)
        return child

    def observe_prediction_duration(self, request: LLMRequest, seconds: float) -> None:
        child = self._child(self.prediction_duration, "pd", request.model, request.target_model)
        child.observe(seconds)

    def observe_predicted(self, record: RequestRecord) -> None:
        self._child(self.predicted_ttft, "pt", record.model, record.target_model).observe(
            record.predicted_ttft)
        if record.predicted_tpot == record.predicted_tpot:
            self._child(self.predicted_tpot, "pp", record.model, record.target_model).observe(
                record.predicted_tpot)
        if record.slo.ttft_s is not None:
            self.slo_requests.labels("ttft").inc()
        if record.slo.tpot_s is not None:
            self.slo_requests.labels("tpot").inc()

    def observe_ttft(self, record: RequestRecord, ttft: float) -> None:
        self._child(self.ttft, "t", record.model, record.target_model).observe(ttft)
        if record.slo.ttft_s is not None and ttft > record.slo.ttft_s:
            self.slo_violations.labels(record.model, record.target_model, "ttft").inc()
        if record.predicted_ttft == record.predicted_ttft and ttft > 0:
            self.prediction_error.labels("ttft", record.pod).observe(abs(record.predicted_ttft - ttft) / ttft)

    def observe_tpot(self, record: RequestRecord, tpot: float) -> None:
        self._child(self.tpot, "p", record.model, record.target_model).observe(tpot)
        if record.slo.tpot_s is not None and tpot > record.slo.tpot_s:
            self.slo_violations.labels(record.model, record.target_model, "tpot").inc()
        if record.predicted_tpot == record.predicted_tpot and tpot > 0:
            self.prediction_error.labels("tpot", record.pod).observe(abs(record.predicted_tpot - tpot) / tpot)

    # --- exposition -------------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        return iter(())  # no duplicate-name check: tests may register a fresh runtime

    def collect(self) -> Iterator[Metric]:
        for metric in (self.ttft, self.predicted_ttft, self.prediction_duration, self.tpot,
                       self.predicted_tpot, self.slo_violations, self.prediction_error,
                       self.slo_requests, self.slo_rejected, self.deferred):
            yield from metric.collect()
        p = self.predictor
        yield GaugeMetricFamily("epp_latency_training_lag_seconds",
                                "Age of the oldest latency observation not yet in a published model.",
                                value=p.training_lag())
        yield GaugeMetricFamily("epp_latency_training_duration_seconds",
                                "Duration of the last refit of the latency models (all pods).",
                                value=p.last_fit_s)
        yield GaugeMetricFamily("epp_latency_model_trained",
                                "1 once the latency predictor is used for routing, 0 while it falls back.",
                                value=1.0 if p.ready else 0.0)
        samples = GaugeMetricFamily("epp_latency_model_samples",
                                    "Observations in the latency model's training windows.", labels=["type"])
        for target, count in p.sample_counts().items():
            samples.add_metric([target], count)
        yield samples
        yield from pod_model_gauges(p.models)


def pod_model_gauges(models: Mapping[str, Coefficients]) -> Iterator[Metric]:
    """What the predictor has learnt of each pod, for an operator to check against the
    hardware: a pod that is really 2x slower should read a speed near 2 (a wrong speed sent
    long prompts to the slow pod once, docs/latency-routing.md), and its step time should
    match the engine's. Pods without their own model yet are absent."""
    speed = GaugeMetricFamily("epp_latency_pod_speed_ratio",
                              "How many times slower than the pooled latency model a pod runs, by type "
                              "(ttft, tpot).", labels=["type", "pod"])
    base = GaugeMetricFamily("epp_latency_pod_step_base_seconds",
                             "A pod's learnt engine step time without prefill tokens.", labels=["pod"])
    per_ktoken = GaugeMetricFamily("epp_latency_pod_step_seconds_per_ktoken",
                                   "A pod's learnt engine step time per 1k prefill tokens.", labels=["pod"])
    pooled = models.get(POOLED)
    # A speed is estimated against a pooled fit, from MIN_SPEED_SAMPLES of the pod's own; before
    # that it reads a placeholder 1.
    ttft_known = pooled is not None and pooled.ttft is not None
    tpot_known = pooled is not None and pooled.tpot is not None
    for pod, model in sorted(models.items()):
        if pod == POOLED:
            continue
        if ttft_known and model.ttft_samples >= MIN_SPEED_SAMPLES:
            speed.add_metric(["ttft", pod], model.ttft_speed)
        if tpot_known and model.tpot_samples >= MIN_SPEED_SAMPLES:
            speed.add_metric(["tpot", pod], model.tpot_speed)
        if model.step is not None:
            base.add_metric([pod], model.step.base)
            per_ktoken.add_metric([pod], model.step.per_ktoken)
    yield speed
    yield base
    yield per_ktoken
