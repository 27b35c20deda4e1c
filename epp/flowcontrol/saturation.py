"""Pool saturation for the legacy admission path, and the detector used when the config
names none.

`PoolSaturation.is_saturated()` asks the configured SaturationDetector plugin (see
plugins/utilization_detector.py, plugins/concurrency_detector.py) about the healthy
endpoints: saturated at >= 1.0, as GIE's admission does. With flow control off, sheddable
requests (priority < 0) are rejected then; with it on, requests queue instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datastore.datastore import Datastore
from epp.flowcontrol.interfaces import SaturationDetector


@dataclass(slots=True)
class SaturationConfig:
    """The `epp serve` flags for the utilization detector used when the EndpointPickerConfig
    configures none (--saturation-queue-depth, --saturation-kv-cache)."""

    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    # Seconds; None disables the freshness requirement (e.g. when nothing scrapes metrics).
    # 1 s rather than GIE's 200 ms: a busy 2-core host can miss a few 50 ms scrapes, and
    # flapping to "saturated" would shed sheddable work for nothing.
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

    def detector(self) -> SaturationDetector:
        from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector

        self.validate()
        params = UtilizationDetector.Params(
            queue_depth_threshold=self.queue_depth_threshold,
            kv_cache_util_threshold=self.kv_cache_util_threshold,
            metrics_staleness_threshold=self.metrics_staleness_threshold)
        return UtilizationDetector(name=UtilizationDetector.type_name, params=params)


class PoolSaturation:
    """Saturation of the pool's healthy endpoints by one detector (replaceable on reload)."""

    def __init__(self, datastore: Datastore, detector: SaturationDetector) -> None:
        self.datastore = datastore
        self.detector = detector

    def saturation(self) -> float:
        return self.detector.saturation(self.datastore.healthy_endpoints())

    def is_saturated(self) -> bool:
        return self.saturation() >= 1.0
