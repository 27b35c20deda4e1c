"""Per-request OpenTelemetry spans of the EPP, named as the reference EPP names them.

One SERVER span `gateway.request` per HTTP request, parented to the client's W3C
`traceparent` (Envoy passes the request headers to ext_proc), with children:
- `gateway.admission`: API key, parsing, concurrency admission and the flow-control queue;
- `gateway.request_orchestration`: the scheduling cycle, with one `run_scheduler_profile`
  per profile (`llm_d.epp.scheduling.profile.name`), and in each profile one
  `llm_d.epp.scorer.<type>` span per scorer and a `pick_endpoints` span for the picker.
The EPP's span context is sent on to the pod in `traceparent` (and `tracestate`), so vLLM's
own request span (`--otlp-traces-endpoint`) continues the same trace.

Tracing is off by default. When it is off the handler holds no RequestTracing at all and
the hot path pays one `is None` check. When it is on, the scheduler is run through a traced
copy (same plugin instances; scorers and pickers wrapped to open spans and keep their
scores), built once per scheduler and rebuilt after a config reload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from epp.datastore.endpoint import Endpoint
from epp.observability.tracing import TracingConfig
from epp.scheduling.interfaces import Picker, Scorer
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import (
    CACHED_TOKENS_SUFFIX,
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingResult,
    ScoredEndpoint,
)

TRACER_NAME = "llm-epp/epp/server"
SCORES_KEY = "tracing.scores"  # CycleState: {(profile, scorer name): [score per endpoint]}
MAX_TRACED_SCORES = 8  # endpoints listed per scorer / picker span, best first
_PROPAGATOR = TraceContextTextMapPropagator()


def tracing_config_from_env(enabled: bool, exporter: str | None = None,
                            endpoint: str | None = None, ratio: float | None = None) -> TracingConfig:
    """The reference EPP's settings: `--tracing` turns spans on; the exporter, the sampler
    ratio and the collector come from OTEL_TRACES_EXPORTER (console), OTEL_TRACES_SAMPLER_ARG
    (0.1, parent-based) and OTEL_EXPORTER_OTLP_ENDPOINT unless given as flags."""
    env = os.environ
    exp = exporter or env.get("OTEL_TRACES_EXPORTER", "console")
    if ratio is None:
        sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        if sampler != "parentbased_traceidratio":
            raise ValueError(f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; "
                             "use parentbased_traceidratio (the reference EPP's only sampler)")
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "0.1")
        try:
            ratio = float(raw)
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number in [0, 1]") from None
    cfg = TracingConfig(enabled=enabled, service_name=env.get("OTEL_SERVICE_NAME", "llm-epp"),
                        exporter=exp,  # type: ignore[arg-type]
                        sample_ratio=ratio,
                        otlp_endpoint=endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    cfg.validate()
    return cfg


@dataclass(slots=True)
class RequestSpans:
    """The spans of one request (kept on the handler's per-stream state)."""

    request: Span
    admission: Span | None = None


class RequestTracing:
    """Opens the EPP's spans for one request at a time; see the module docstring."""

    def __init__(self, provider: TracerProvider, pool: str = "") -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        self.pool = pool
        self._traced: tuple[Scheduler, Scheduler] | None = None

    # --- the request span ---------------------------------------------------------------
    def start(self, headers: Mapping[str, str], request_id: str, path: str,
              start_ns: int | None = None) -> RequestSpans:
        parent = _PROPAGATOR.extract(headers)
        span = self.tracer.start_span("gateway.request", context=parent, kind=SpanKind.SERVER,
                                      start_time=start_ns)
        if span.is_recording():
            span.set_attribute("gen_ai.request.id", request_id)
            span.set_attribute("url.path", path)
            if self.pool:
                span.set_attribute("llm_d.epp.pool", self.pool)
        spans = RequestSpans(span)
        spans.admission = self.tracer.start_span(
            "gateway.admission", context=trace.set_span_in_context(span))
        return spans

    @staticmethod
    def end_admission(spans: RequestSpans) -> None:
        if spans.admission is not None:
            spans.admission.end()
            spans.admission = None

    @staticmethod
    def on_request(spans: RequestSpans, request: LLMRequest) -> None:
        span = spans.request
        if span.is_recording():
            span.set_attribute("gen_ai.request.model", request.model)
            span.set_attribute("target_model", request.target_model)
            span.set_attribute("request_prio", request.priority)
            span.set_attribute("gen_ai.request.stream", request.stream)

    def schedule(self, spans: RequestSpans, scheduler: Any, request: LLMRequest,
                 endpoints: Sequence[Endpoint]) -> tuple[SchedulingResult, CycleState]:
        """Run one scheduling cycle under a `gateway.request_orchestration` span."""
        self.end_admission(spans)
        traced = self._traced_scheduler(scheduler)
        ctx = trace.set_span_in_context(spans.request)
        with self.tracer.start_as_current_span("gateway.request_orchestration", context=ctx) as span:
            if span.is_recording():
                span.set_attribute("llm_d.epp.candidate_endpoints", len(endpoints))
            result: tuple[SchedulingResult, CycleState] = traced.schedule(request, endpoints)
            return result

    @staticmethod
    def on_decision(spans: RequestSpans, result: SchedulingResult, state: CycleState,
                    targets: Sequence[Endpoint]) -> None:
        span = spans.request
        if not span.is_recording() or not targets:
            return
        picked = targets[0]
        span.set_attribute("llm_d.epp.picked_endpoint", picked.hostport)
        span.set_attribute("llm_d.epp.scheduling.primary_profile", result.primary_profile)
        for name, res in result.profile_results.items():
            if name != result.primary_profile and res is not None and res.targets:
                span.set_attribute(f"llm_d.epp.profile.{name}.endpoint", res.targets[0].hostport)
        scores: dict[tuple[str, str], list[float]] = state.get(SCORES_KEY, {})
        for (profile, scorer), values in scores.items():
            span.set_attribute(f"llm_d.epp.scores.{profile}.{scorer}", values)
        cached = 0
        matched = False
        for key, value in state.items():
            if isinstance(key, str) and key.endswith(CACHED_TOKENS_SUFFIX) and isinstance(value, dict):
                matched = True
                hit = value.get(picked.key, 0)
                if isinstance(hit, int | float) and hit > cached:
                    cached = int(hit)
        if matched:
            span.set_attribute("llm_d.epp.prefix_cache.hit", cached > 0)
            span.set_attribute("llm_d.epp.prefix_cache.matched_tokens", cached)

    @staticmethod
    def propagation_headers(spans: RequestSpans) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) naming the EPP's span, for the pod."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(spans.request))
        return list(carrier.items())

    @staticmethod
    def end(spans: RequestSpans, status: int, error: str = "") -> None:
        RequestTracing.end_admission(spans)
        span = spans.request
        if span.is_recording():
            if status:
                span.set_attribute("http.response.status_code", status)
            if error:
                span.set_status(Status(StatusCode.ERROR, error))
            elif status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    # --- the traced scheduler ------------------------------------------------------------
    def _traced_scheduler(self, scheduler: Any) -> Any:
        if not isinstance(scheduler, Scheduler):
            return scheduler  # a custom SchedulerLike: traced at the orchestration level only
        cached = self._traced
        if cached is not None and cached[0] is scheduler:
            return cached[1]
        profiles = {name: _TracedProfile(self.tracer, p) for name, p in scheduler.profiles.items()}
        traced = Scheduler(profiles, scheduler.profile_handler, scheduler.pre_request_plugins,
                           scheduler.post_response_plugins, scheduler.observer)
        # Keyed by identity: a config reload installs a new Scheduler object.
        self._traced = (scheduler, traced)
        return traced


class _TracedProfile(SchedulerProfile):
    """A profile whose run, scorers and picker open spans (same plugin instances)."""

    __slots__ = ("_tracer",)

    def __init__(self, tracer: trace.Tracer, profile: SchedulerProfile) -> None:
        super().__init__(
            profile.name, profile.filters,
            # The wrappers copy the plugin's type_name per instance (metrics labels stay the
            # plugin's own); the Protocols declare it a ClassVar, hence the casts.
            [(cast(Scorer, _TracedScorer(tracer, profile.name, s, w)), w) for s, w in profile.scorers],
            cast(Picker, _TracedPicker(tracer, profile.picker)), profile.observer)
        self._tracer = tracer

    def run(self, state: CycleState, request: LLMRequest,
            endpoints: Sequence[Endpoint]) -> ProfileRunResult | None:
        with self._tracer.start_as_current_span("run_scheduler_profile") as span:
            if span.is_recording():
                span.set_attribute("llm_d.epp.scheduling.profile.name", self.name)
                span.set_attribute("llm_d.epp.filter.candidate_endpoints", len(endpoints))
            result = super().run(state, request, endpoints)
            if span.is_recording():
                span.set_attribute("llm_d.epp.scheduling.profile.picked",
                                   result.targets[0].hostport if result and result.targets else "")
            return result


class _TracedScorer:
    """Delegates to a scorer, in a `llm_d.epp.scorer.<type>` span, keeping its scores."""

    __slots__ = ("_inner", "_profile", "_tracer", "_weight", "name", "type_name")

    def __init__(self, tracer: trace.Tracer, profile: str, inner: Scorer, weight: float) -> None:
        self._tracer, self._profile, self._inner = tracer, profile, inner
        self.name = inner.name
        self.type_name = inner.type_name
        self._weight = weight

    def score(self, state: CycleState, request: LLMRequest,
              endpoints: Sequence[Endpoint]) -> Sequence[float]:
        with self._tracer.start_as_current_span(f"llm_d.epp.scorer.{self.type_name}") as span:
            scores = self._inner.score(state, request, endpoints)
            if span.is_recording():
                span.set_attribute("llm_d.epp.scorer.type", self.type_name)
                span.set_attribute("llm_d.epp.scorer.name", self.name)
                span.set_attribute("llm_d.epp.scorer.weight", self._weight)
                span.set_attribute("llm_d.epp.scorer.candidate_endpoints", len(endpoints))
                if scores:
                    span.set_attribute("llm_d.epp.scorer.score.max", float(max(scores)))
                    span.set_attribute("llm_d.epp.scorer.score.avg", float(sum(scores)) / len(scores))
                state.setdefault(SCORES_KEY, {})[(self._profile, self.name)] = [
                    round(float(s), 4) for s in scores][:MAX_TRACED_SCORES]
            return scores


class _TracedPicker:
    """Delegates to a picker, in a `pick_endpoints` span listing the best scored endpoints."""

    __slots__ = ("_inner", "_tracer", "name", "type_name")

    def __init__(self, tracer: trace.Tracer, inner: Picker) -> None:
        self._tracer, self._inner = tracer, inner
        self.name = inner.name
        self.type_name = inner.type_name

    def pick(self, state: CycleState, request: LLMRequest,
             scored: Sequence[ScoredEndpoint]) -> ProfileRunResult:
        with self._tracer.start_as_current_span("pick_endpoints") as span:
            if span.is_recording():
                span.set_attribute("llm_d.epp.picker.candidate_endpoints", len(scored))
                best = sorted(scored, key=lambda s: s.score, reverse=True)[:MAX_TRACED_SCORES]
                span.set_attribute("llm_d.epp.picker.top_endpoints", [s.endpoint.hostport for s in best])
                span.set_attribute("llm_d.epp.picker.top_scores", [round(s.score, 4) for s in best])
            result = self._inner.pick(state, request, scored)
            if span.is_recording() and result.targets:
                span.set_attribute("llm_d.epp.picker.picked", result.targets[0].hostport)
            return result
