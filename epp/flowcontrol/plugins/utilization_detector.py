"""utilization-detector: pool saturation from the pods' scraped queue depth and KV-cache use
(GIE v1.5 pkg/epp/framework/plugins/flowcontrol/saturationdetector/utilization).

Each endpoint scores max(waiting / queueDepthThreshold, kvCache / kvCacheUtilThreshold)
(a roofline: whichever resource is closer to its limit); an endpoint whose metrics are older
than metricsStalenessThreshold (or never scraped) scores 1.0, since routing on unknown load is
how overload starts. Pool saturation is the mean over the candidates (no candidates: 1.0).
As a filter it keeps endpoints below the relaxed limits threshold * (1 + headroom) and, like
GIE, keeps every endpoint when none passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.flowcontrol.quantity import parse_duration
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest

_NO_LIMIT = float("inf")


@register_plugin
class UtilizationDetector:
    type_name: ClassVar[str] = "utilization-detector"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.waiting_queue_size", "metrics.kv_cache_usage")

    @dataclass(slots=True)
    class Params:
        queue_depth_threshold: int = 5
        kv_cache_util_threshold: float = 0.8
        # A Kubernetes duration ("200ms", "1s") or a number of seconds; null disables the
        # freshness requirement (our extension, for pools nothing scrapes).
        metrics_staleness_threshold: str | float | None = "200ms"
        headroom: float = 0.0

        def validate(self) -> None:
            if self.queue_depth_threshold <= 0:
                raise ValueError(f"parameter 'queueDepthThreshold' must be > 0, got {self.queue_depth_threshold}")
            if not 0.0 < self.kv_cache_util_threshold <= 1.0:
                raise ValueError("parameter 'kvCacheUtilThreshold' must be in (0, 1], got "
                                 f"{self.kv_cache_util_threshold}")
            if self.staleness_s() <= 0:
                raise ValueError("parameter 'metricsStalenessThreshold' must be > 0, got "
                                 f"{self.metrics_staleness_threshold!r}")
            if self.headroom < 0:
                raise ValueError(f"parameter 'headroom' must be >= 0, got {self.headroom}")

        def staleness_s(self) -> float:
            if self.metrics_staleness_threshold is None:
                return float("inf")
            try:
                return parse_duration(self.metrics_staleness_threshold)
            except ValueError as e:
                raise ValueError(f"parameter 'metricsStalenessThreshold': {e}") from None

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.params.validate()
        self._staleness = self.params.staleness_s()

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        if not endpoints:
            return 1.0
        p = self.params
        now = time.monotonic()
        stale = self._staleness
        total = 0.0
        for ep in endpoints:
            m = ep.metrics
            if (m.updated_at <= 0.0 or now - m.updated_at > stale) and stale != _NO_LIMIT:
                total += 1.0
                continue
            total += max(m.waiting_queue_size / p.queue_depth_threshold,
                         m.kv_cache_usage / p.kv_cache_util_threshold)
        return total / len(endpoints)

    def filter(self, state: CycleState, request: LLMRequest,
               endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        p = self.params
        q_limit = p.queue_depth_threshold * (1.0 + p.headroom)
        kv_limit = p.kv_cache_util_threshold * (1.0 + p.headroom)
        now = time.monotonic()
        kept = [ep for ep in endpoints
                if (self._staleness == _NO_LIMIT
                    or (ep.metrics.updated_at > 0.0 and now - ep.metrics.updated_at <= self._staleness))
                and ep.metrics.waiting_queue_size < q_limit and ep.metrics.kv_cache_usage < kv_limit]
        return kept or endpoints
