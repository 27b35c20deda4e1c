"""Pool saturation detection (GIE's utilization detector).

An endpoint has capacity when its metrics are fresh and both its waiting queue and its
KV-cache usage are below the thresholds. The pool is saturated when no healthy endpoint
has capacity; stale or never-scraped metrics count as "no capacity", since routing
sheddable work on unknown load is how overload starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint


@dataclass(slots=True)
class SaturationConfig:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    # Seconds; None disables the freshness requirement (e.g. when nothing scrapes metrics).
    metrics_staleness_threshold: float | None = 1.0

    def validate(self) -> None:
        if self.queue_depth_threshold < 1:
            raise ValueError(f"queueDepthThreshold must be >= 1, got {self.queue_depth_threshold}")
        if not 0.0 < self.kv_cache_util_threshold <= 1.0:
            raise ValueError(f"kvCacheUtilThreshold must be in (0, 1], got {self.kv_cache_util_threshold}")
        if self.metrics_staleness_threshold is not None and self.metrics_staleness_threshold <= 0:
            raise ValueError(
                f"metricsStalenessThreshold must be > 0 seconds, got {self.metrics_staleness_threshold}"
            )


class SaturationDetector:
    def __init__(self, datastore: Datastore, config: SaturationConfig | None = None) -> None:
        self.datastore = datastore
        self.config = config or SaturationConfig()
        self.config.validate()

    def has_capacity(self, ep: Endpoint, now: float | None = None) -> bool:
        cfg = self.config
        m = ep.metrics
        if cfg.metrics_staleness_threshold is not None:
            if now is None:
                now = time.monotonic()
            if m.updated_at <= 0.0 or now - m.updated_at > cfg.metrics_staleness_threshold:
                return False
        return (m.waiting_queue_size < cfg.queue_depth_threshold
                and m.kv_cache_usage < cfg.kv_cache_util_threshold)

    def is_saturated(self, endpoints: Iterable[Endpoint] | None = None) -> bool:
        """True when none of `endpoints` (default: the healthy endpoints) has capacity."""
        now = time.monotonic()
        pool = self.datastore.healthy_endpoints() if endpoints is None else endpoints
        return not any(self.has_capacity(ep, now) for ep in pool)
