"""An endpoint (one model-server pod and target port) and the signals known about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

ROLE_LABEL = "llm-d.ai/role"


class Role(StrEnum):
    """Disaggregation role of a pod, from the `llm-d.ai/role` label."""

    PREFILL = "prefill"
    DECODE = "decode"
    BOTH = "both"

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Role:
        value = labels.get(ROLE_LABEL, "both")
        try:
            return cls(value)
        except ValueError:
            return cls.BOTH


@dataclass(slots=True)
class EndpointMetrics:
    """Model-server signals scraped from the pod's /metrics (vLLM names, mapped per engine).

    `updated_at` is a time.monotonic() stamp of the last successful scrape; 0.0 means never.
    """

    waiting_queue_size: int = 0
    running_requests: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    active_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_loras: int = 0
    block_size: int = 16
    num_gpu_blocks: int = 0
    # Cumulative sum (seconds) and count of the engine's inter-token latency histogram
    # (vllm:inter_token_latency_seconds); -1.0 = the pod does not export it. The in-flight
    # ledger turns their growth between scrapes into the pod's recent time per decode step.
    itl_sum: float = -1.0
    itl_count: float = -1.0
    updated_at: float = 0.0


@dataclass(slots=True, eq=False)
class Endpoint:
    """One pod:port of the InferencePool.

    Identity is the object itself (eq=False keeps hashing O(1) and allocation-free);
    `key` ("namespace/name:port" style) is the stable name used in logs, metrics and indexes.
    `inflight` / `inflight_tokens` count the requests (and their estimated tokens) this EPP
    process sent to the endpoint that have not completed; only epp.datastore.inflight's
    InflightTracker writes them. `peer_inflight` / `peer_inflight_tokens` are the same for the
    other worker processes of this EPP (`--workers N`).
    """

    name: str
    address: str
    port: int
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    healthy: bool = True
    inflight: int = 0
    inflight_tokens: int = 0
    # Requests (tokens) other EPP worker processes of this host have in flight to the endpoint.
    peer_inflight: int = 0
    peer_inflight_tokens: int = 0
    # The other workers' recent-prompt-tokens estimate (InflightTracker.recent_prompt_tokens).
    peer_recent_prompt_tokens: float = 0.0
    # Precomputed strings used on the hot path (set in __post_init__).
    hostport: str = ""
    key: str = ""
    role: Role = Role.BOTH

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.hostport = f"{host}:{self.port}"
        self.key = f"{self.namespace}/{self.name}"
        self.role = Role.from_labels(self.labels)

    def __repr__(self) -> str:
        return f"Endpoint({self.key} {self.hostport})"
