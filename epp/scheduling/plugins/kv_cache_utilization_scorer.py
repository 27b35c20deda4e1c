"""kv-cache-utilization-scorer: prefer endpoints with free KV-cache (score = 1 - usage).

Reads EndpointMetrics.kv_cache_usage (vllm:kv_cache_usage_perc, 0..1). Usage outside
[0, 1] (a bad scrape) is clamped so the score stays in range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class KVCacheUtilizationScorer(ParameterlessPlugin):
    type_name: ClassVar[str] = "kv-cache-utilization-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.kv_cache_usage",)

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        scores = [1.0 - ep.metrics.kv_cache_usage for ep in endpoints]
        if min(scores) < 0.0 or max(scores) > 1.0:
            scores = [0.0 if s < 0.0 else (1.0 if s > 1.0 else s) for s in scores]
        return scores
