"""Prometheus metrics of the response cache (registered in the EPP's registry).

- epp_response_cache_hits_total{model}: answered from the cache (no pod saw the request)
- epp_response_cache_misses_total{model}: cacheable, looked up, not found (the pods answer)
- epp_response_cache_fills_total{model}: answers stored
- epp_response_cache_bytes_total{direction}: bytes stored (`stored`) and sent from the cache (`served`)
- epp_response_cache_skipped_total{reason}: requests not cached or answers not stored, by reason
  (no_rule, not_deterministic, no_store, bad_body, store_unavailable, status_not_200, too_large,
  incomplete, invalid_response)
- epp_response_cache_redis_errors_total{op}: failed Redis calls (get, set); every such request
  is answered by the pods
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.hits = Counter("epp_response_cache_hits_total", "Requests answered from the response cache.",
                            ["model"], registry=registry)
        self.misses = Counter("epp_response_cache_misses_total",
                              "Cacheable requests not found in the response cache.", ["model"], registry=registry)
        self.fills = Counter("epp_response_cache_fills_total", "Answers stored in the response cache.",
                             ["model"], registry=registry)
        self.bytes = Counter("epp_response_cache_bytes_total", "Bytes stored in and served from the response cache.",
                             ["direction"], registry=registry)
        self.skipped = Counter("epp_response_cache_skipped_total",
                               "Requests not cached or answers not stored, by reason.", ["reason"],
                               registry=registry)
        self.redis_errors = Counter("epp_response_cache_redis_errors_total",
                                    "Failed Redis calls of the response cache (the pods answered).", ["op"],
                                    registry=registry)
        self.served = self.bytes.labels("served")
        self.stored = self.bytes.labels("stored")
