"""program-aware-fairness: flows ("programs": the fairness ID, e.g. one agentic workflow or
tenant) compete on the service they have attained, not request by request (llm-d-router
pkg/epp/framework/plugins/flowcontrol/fairness/program-aware: plugin.go, strategy_las.go;
same type name, parameters, defaults, validation and scoring).

Strategy `las` (Least Attained Service, the only one upstream): among the band's non-empty
flows, with S a program's attained service and W its head request's wait (whole ms), both
min-max normalized over those flows (0.5 when all are equal),

    score = lasWeightService * (1 - norm(S)) + lasWeightHeadWait * norm(W)

and the highest score is served. S counts input tokens once and output tokens twice
(prompt_tokens + 2 * completion_tokens from each finished response's usage) and halves every
lasHalfLifeSeconds of wall-clock time (0: never), folded in lazily whenever S is read or
added to, so an idle program ages out without being visited.

Besides picking, the plugin keeps per-program books through the request lifecycle
(RequestLifecycleHooks; upstream: PreRequest and ResponseBody): dispatched and in-flight
counts, the running mean of the queue wait of the requests it picked, the last completion.
A program with nothing in flight and no completion for evictionTtlSeconds (0: never) is
forgotten, checked every evictionSweepSeconds.

Differences from upstream (docs/flow-control.md): ties go to the flow first in the band's
turn order (upstream: Go map order, i.e. random); the idle sweep runs when the plugin is used
rather than on a timer; Jain's index is computed at scrape time rather than on every pick;
completion is counted when the request ends for any reason (upstream: at the end of the
response body only, so an abandoned request stays in flight forever).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from epp.flowcontrol.queue import Band, Flow
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import LLMRequest

# Output tokens cost ~2x input tokens (upstream weightInputToken / weightOutputToken).
WEIGHT_INPUT_TOKEN = 1
WEIGHT_OUTPUT_TOKEN = 2
METRICS_SERVICE = "flowcontrol.program_aware.metrics"
_METRIC_PREFIX = "llm_d_epp_"  # upstream's Prometheus subsystem


@dataclass(slots=True)
class ProgramState:
    """One program's books (upstream ProgramMetrics + the LAS strategy's lasState)."""

    last_completion: float  # time.monotonic(); seeded at creation so a silent program ages out
    average_wait_ms: float = 0.0
    wait_count: int = 0
    dispatched: int = 0
    in_flight: int = 0
    attained_service: float = 0.0
    # Up to when decay is folded into attained_service (None: not yet anchored).
    decay_anchor: float | None = None
    # attained_service as of the last completion (the exported gauge, as upstream).
    service_at_completion: float | None = None

    def service(self, now: float, half_life_s: float) -> float:
        """Attained service with decay up to `now` folded in (moves the anchor)."""
        if self.decay_anchor is None:
            self.decay_anchor = now
            return self.attained_service
        elapsed = now - self.decay_anchor
        if elapsed > 0:
            if half_life_s > 0:
                self.attained_service *= 2.0 ** (-elapsed / half_life_s)
            self.decay_anchor = now
        return self.attained_service


def _normalize(v: float, lo: float, hi: float) -> float:
    return 0.5 if hi == lo else (v - lo) / (hi - lo)


def jain_index(values: list[float]) -> float:
    """Jain's fairness index; 1.0 with fewer than two values or all zero (upstream)."""
    total, squares, n = sum(values), sum(v * v for v in values), len(values)
    if n <= 1 or squares == 0:
        return 1.0
    return total * total / (n * squares)


@register_plugin
class ProgramAwareFairness:
    type_name: ClassVar[str] = "program-aware-fairness"

    @dataclass(slots=True)
    class Params:
        strategy: str = "las"
        eviction_ttl_seconds: float = 3600.0
        eviction_sweep_seconds: float = 300.0
        las_weight_service: float = 0.8
        las_weight_head_wait: float = 0.2
        las_half_life_seconds: float = 60.0

        def validate(self) -> None:
            # Upstream's order and wording (Config.validate, then newStrategy).
            if self.eviction_ttl_seconds < 0:
                raise ValueError(f"parameter 'evictionTtlSeconds' must be >= 0, got {self.eviction_ttl_seconds}")
            if self.eviction_sweep_seconds <= 0:
                raise ValueError(f"parameter 'evictionSweepSeconds' must be > 0, got {self.eviction_sweep_seconds}")
            if self.las_weight_service < 0:
                raise ValueError(f"parameter 'lasWeightService' must be >= 0, got {self.las_weight_service}")
            if self.las_weight_head_wait < 0:
                raise ValueError(f"parameter 'lasWeightHeadWait' must be >= 0, got {self.las_weight_head_wait}")
            if self.las_half_life_seconds < 0:
                raise ValueError(f"parameter 'lasHalfLifeSeconds' must be >= 0, got {self.las_half_life_seconds}")
            if self.strategy not in ("", "las"):
                raise ValueError(f"parameter 'strategy': unknown scoring strategy {self.strategy!r}: "
                                 "only 'las' is supported")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.params.validate()
        self.programs: dict[str, ProgramState] = {}
        self.clock = time.monotonic  # tests replace it
        self._next_sweep: float | None = None  # the first use starts the sweep interval
        if ctx is not None and ctx.services.get("metrics.registry") is not None:
            collector = ctx.services.get(METRICS_SERVICE)
            if collector is None:
                collector = ctx.services[METRICS_SERVICE] = ProgramAwareCollector()
                ctx.services["metrics.registry"].register(collector)
            collector.plugin = self  # the latest config's instance is the one exported

    def program(self, program_id: str) -> ProgramState:
        state = self.programs.get(program_id)
        if state is None:
            state = self.programs[program_id] = ProgramState(last_completion=self.clock())
        return state

    # --- FairnessPolicy -----------------------------------------------------------------
    def pick(self, band: Band) -> Flow | None:
        now = self.clock()
        self._maybe_sweep(now)
        half_life = self.params.las_half_life_seconds
        entries: list[tuple[Flow, float, float]] = []
        for flow in band.flows.values():
            head = flow.head()
            if head is None:
                continue
            service = self.program(flow.flow_id).service(now, half_life)
            wait_ms = float(int((now - head.enqueued_at) * 1000))  # Go's Duration.Milliseconds()
            entries.append((flow, service, wait_ms))
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0][0]
        lo_s = min(e[1] for e in entries)
        hi_s = max(e[1] for e in entries)
        lo_w = min(e[2] for e in entries)
        hi_w = max(e[2] for e in entries)
        w_s, w_w = self.params.las_weight_service, self.params.las_weight_head_wait
        best, best_score = entries[0][0], float("-inf")
        for flow, service, wait_ms in entries:
            score = w_s * (1.0 - _normalize(service, lo_s, hi_s)) + w_w * _normalize(wait_ms, lo_w, hi_w)
            if score > best_score:
                best, best_score = flow, score
        return best

    # --- RequestLifecycleHooks ------------------------------------------------------------
    def on_dispatched(self, request: LLMRequest, flow_id: str, waited: float | None) -> None:
        state = self.program(flow_id)
        state.in_flight += 1
        state.dispatched += 1
        if waited is not None:
            wait_ms = float(int(waited * 1000))
            state.wait_count += 1
            state.average_wait_ms += (wait_ms - state.average_wait_ms) / state.wait_count

    def on_completed(self, request: LLMRequest, flow_id: str, usage: Mapping[str, Any] | None) -> None:
        now = self.clock()
        state = self.program(flow_id)
        prompt = usage.get("prompt_tokens") if usage is not None else None
        completion = usage.get("completion_tokens") if usage is not None else None
        cost = (WEIGHT_INPUT_TOKEN * (prompt if isinstance(prompt, int) else 0)
                + WEIGHT_OUTPUT_TOKEN * (completion if isinstance(completion, int) else 0))
        state.service(now, self.params.las_half_life_seconds)
        state.attained_service += cost
        state.service_at_completion = state.attained_service
        state.in_flight = max(0, state.in_flight - 1)
        state.last_completion = now
        self._maybe_sweep(now)

    # --- idle-program eviction ------------------------------------------------------------
    def _maybe_sweep(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.params.eviction_sweep_seconds
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.params.eviction_sweep_seconds
        if self.params.eviction_ttl_seconds > 0:
            self.evict_idle(now)

    def evict_idle(self, now: float) -> None:
        ttl = self.params.eviction_ttl_seconds
        for pid in [pid for pid, s in self.programs.items()
                    if s.in_flight == 0 and now - s.last_completion > ttl]:
            del self.programs[pid]

    def fairness_index(self) -> float:
        """Jain's index over the programs' mean queue waits (programs with no wait observed
        are skipped)."""
        return jain_index([s.average_wait_ms for s in self.programs.values() if s.wait_count])


class ProgramAwareCollector(Collector):
    """Upstream's three gauges, read from the plugin at scrape time."""

    def __init__(self) -> None:
        self.plugin: ProgramAwareFairness | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        plugin = self.plugin
        if plugin is None:
            return
        yield GaugeMetricFamily(f"{_METRIC_PREFIX}program_aware_jains_fairness_index",
                                "Jain's fairness index over average wait time across active programs.",
                                value=plugin.fairness_index())
        wait = GaugeMetricFamily(f"{_METRIC_PREFIX}program_aware_avg_wait_time_milliseconds",
                                 "Cumulative mean of flow-control queue wait time per program in milliseconds.",
                                 labels=["program_id"])
        service = GaugeMetricFamily(f"{_METRIC_PREFIX}program_aware_attained_service_tokens",
                                    "Time-decayed attained service (weighted tokens consumed) per program.",
                                    labels=["program_id"])
        for pid, state in list(plugin.programs.items()):
            if state.dispatched:
                wait.add_metric([pid], state.average_wait_ms)
            if state.service_at_completion is not None:
                service.add_metric([pid], state.service_at_completion)
        yield wait
        yield service
