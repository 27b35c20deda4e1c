"""session-affinity-scorer: keep a conversation on the pod that served it (llm-d's scorer,
same type name and parameters; llm-d-router pkg/epp/framework/plugins/scheduling/scorer/
sessionaffinity).

Two strategies (`strategy`):
- `encoded_endpoint_header` (default, stateless): the response carries the pod that served it,
  base64 (standard alphabet) of its `namespace/name`, in `x-session-token` (configurable:
  `encodedEndpointHeaderConfig.header`); the client sends the header back and that pod scores
  1, every other 0. With `profileName` (P/D) the token names that profile's pod instead of the
  primary one. Envoy must send response headers to the EPP (`response_header_mode: SEND`).
- `session_id`: the client names its session in a header (`sessionIdConfig.sources`, default
  `x-session-id`), and the session is hashed onto the candidate pods with rendezvous hashing:
  the pod with the highest H(session, pod) scores 1. Unlike llm-d's server-side binding table,
  the hash needs no state, so every EPP replica (and worker) agrees without sharing anything;
  a pod leaving moves only its own sessions, a pod joining takes about 1/N of them.
  `evictionTtlSeconds` / `evictionSweepSeconds` are accepted for config compatibility and have
  nothing to evict.

Yielding: the scorer abstains (every candidate 0, so the other scorers decide) when the
session's pod is gone (not a candidate) or saturated: waiting queue >= `queueDepthThreshold`
or KV-cache use >= `kvCacheUtilThreshold` (GIE's saturation defaults, 5 and 0.8), unless
`yieldWhenSaturated: false`. With the header strategy the response then names the new pod, so
the conversation moves there; with the hash strategy the next request goes back to the hashed
pod once it has room.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from epp.datastore.endpoint import Endpoint
from epp.rollout.assign import unit_hash
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult

log = logging.getLogger(__name__)

ENCODED_ENDPOINT_HEADER = "encoded_endpoint_header"
SESSION_ID = "session_id"
DEFAULT_TOKEN_HEADER = "x-session-token"
DEFAULT_SESSION_ID_HEADER = "x-session-id"
_SESSION_ID_KEYS = ("sources", "evictionTtlSeconds", "evictionSweepSeconds")


def encode_token(endpoint: Endpoint) -> str:
    """The session token of a pod: base64 of `namespace/name` (llm-d's encoding)."""
    return base64.b64encode(endpoint.key.encode()).decode()


def decode_token(token: str) -> str:
    """`namespace/name` from a token; "" when it is not valid base64 text."""
    try:
        return base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, ValueError):
        return ""


@register_plugin
class SessionAffinityScorer:
    type_name: ClassVar[str] = "session-affinity-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.waiting_queue_size", "metrics.kv_cache_usage")

    @dataclass(slots=True)
    class Params:
        strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
        profile_name: str = ""
        encoded_endpoint_header_config: dict[str, Any] = field(default_factory=dict)
        session_id_config: dict[str, Any] = field(default_factory=dict)
        yield_when_saturated: bool = True
        queue_depth_threshold: int = 5
        kv_cache_util_threshold: float = 0.8

        def validate(self) -> None:
            header = self.encoded_endpoint_header_config.get("header", DEFAULT_TOKEN_HEADER)
            unknown = set(self.encoded_endpoint_header_config) - {"header"}
            if unknown:
                raise ValueError(f"encodedEndpointHeaderConfig: unknown field(s) {sorted(unknown)} "
                                 "(known: header)")
            if not isinstance(header, str) or not header.strip():
                raise ValueError(f"encodedEndpointHeaderConfig.header must be a header name, got {header!r}")
            unknown = set(self.session_id_config) - set(_SESSION_ID_KEYS)
            if unknown:
                raise ValueError(f"sessionIdConfig: unknown field(s) {sorted(unknown)} "
                                 f"(known: {', '.join(_SESSION_ID_KEYS)})")
            sources = self.session_id_config.get("sources", [{"header": DEFAULT_SESSION_ID_HEADER}])
            if not isinstance(sources, list) or not sources:
                raise ValueError("sessionIdConfig.sources must be a non-empty list of {header: NAME}")
            for i, src in enumerate(sources):
                if not isinstance(src, dict) or set(src) - {"header", "attribute", "producer"}:
                    raise ValueError(f"sessionIdConfig.sources[{i}] must be a mapping with 'header'")
                if "attribute" in src:
                    raise ValueError(f"sessionIdConfig.sources[{i}].attribute: request attributes are not "
                                     "supported by this EPP; use a header source")
                if not isinstance(src.get("header"), str) or not src["header"].strip():
                    raise ValueError(f"sessionIdConfig.sources[{i}].header must be a header name")
            for key in ("evictionTtlSeconds", "evictionSweepSeconds"):
                value = self.session_id_config.get(key, 1)
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"sessionIdConfig.{key} must be a number > 0, got {value!r}")
            if self.queue_depth_threshold < 1:
                raise ValueError(f"queueDepthThreshold must be >= 1, got {self.queue_depth_threshold}")
            if not 0.0 < self.kv_cache_util_threshold <= 1.0:
                raise ValueError(f"kvCacheUtilThreshold must be in (0, 1], got {self.kv_cache_util_threshold}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = p = params if params is not None else self.Params()
        p.validate()
        # Envoy hands headers to the EPP in lower case.
        self.token_header = str(p.encoded_endpoint_header_config.get("header", DEFAULT_TOKEN_HEADER)).strip().lower()
        sources = p.session_id_config.get("sources", [{"header": DEFAULT_SESSION_ID_HEADER}])
        self.session_headers = tuple(str(s["header"]).strip().lower() for s in sources)
        self.hashed = p.strategy == SESSION_ID

    def _saturated(self, ep: Endpoint) -> bool:
        p = self.params
        return p.yield_when_saturated and (ep.metrics.waiting_queue_size >= p.queue_depth_threshold
                                           or ep.metrics.kv_cache_usage >= p.kv_cache_util_threshold)

    def preferred(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> int:
        """Index of the session's pod among `endpoints`; -1 without a session or pod."""
        headers = request.headers
        if self.hashed:
            session = ""
            for name in self.session_headers:
                session = headers.get(name, "").strip()
                if session:
                    break
            if not session or not endpoints:
                return -1
            best, best_h = -1, -1.0
            for i, ep in enumerate(endpoints):
                h = unit_hash(f"{session}\0{ep.key}")
                if h > best_h:
                    best, best_h = i, h
            return best
        token = headers.get(self.token_header)
        if not token:
            return -1
        key = decode_token(token)
        for i, ep in enumerate(endpoints):
            if ep.key == key:
                return i
        return -1  # gone (or a token for another pool)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        scores = [0.0] * len(endpoints)
        i = self.preferred(request, endpoints)
        if i >= 0 and not self._saturated(endpoints[i]):
            scores[i] = 1.0
        return scores

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if self.hashed:
            return
        profile = self.params.profile_name or result.primary_profile
        res = result.profile_results.get(profile)
        if res is not None and res.targets:
            result.response_headers[self.token_header] = encode_token(res.targets[0])
