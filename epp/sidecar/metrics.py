"""The sidecar's own metrics, in a registry owned by one SidecarServer (no global state).

Names are prefixed `epp_sidecar_` so they never collide with the engine's `vllm:` series
when the sidecar appends them to the decoder's /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Request modes.
MODE_PASSTHROUGH = "passthrough"  # no prefiller named: plain proxy to the decoder
MODE_DISAGGREGATED = "disaggregated"  # remote prefill, then decode with the KV params
MODE_FALLBACK = "fallback"  # remote prefill failed: decoder prefilled locally
MODE_FAILED = "failed"  # remote prefill failed and fallback is disabled

# Prefill failure reasons.
PREFILL_CONNECT = "connect"
PREFILL_TIMEOUT = "timeout"
PREFILL_STATUS = "status"
PREFILL_INVALID_RESPONSE = "invalid-response"
PREFILL_MISSING_PARAMS = "missing-kv-transfer-params"
PREFILL_FORBIDDEN = "forbidden"  # target is not a pool member nor allowed (never contacted)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "epp_sidecar_requests_total",
            "Inference requests handled by the routing sidecar, by how they were served",
            ["mode"],
            registry=self.registry,
        )
        self.prefill_errors = Counter(
            "epp_sidecar_prefill_errors_total",
            "Remote prefill attempts that failed, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.prefill_duration = Histogram(
            "epp_sidecar_prefill_duration_seconds",
            "Duration of successful remote prefill requests",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.decoder_errors = Counter(
            "epp_sidecar_decoder_errors_total",
            "Requests the local decoder could not be reached for",
            registry=self.registry,
        )
