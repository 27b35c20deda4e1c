"""Per-endpoint decision counters for GetPool and `epp top` (cheap: one dict update per call).

Fed as a ServerObserver beside the metrics observer (epp/server/app.py tees them): decisions
per endpoint, and from completed responses the prompt tokens the pod reported as cached
(vLLM's usage.prompt_tokens_details.cached_tokens; only when Envoy sends response bodies).
Rates are over the last `window_s` seconds, from snapshots taken when somebody reads (the
first read after start: the average since start).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.endpoint import Endpoint
from epp.scheduling.types import LLMRequest, SchedulingResult
from epp.server.errors import RequestError


@dataclass(slots=True)
class EndpointCounters:
    decisions: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    usage_responses: int = 0  # completed responses that reported prompt and cached tokens

    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens > 0 else -1.0


@dataclass(slots=True)
class DecisionStatsCollector:
    window_s: float = 5.0
    total: int = 0
    errors: int = 0
    per_endpoint: dict[str, EndpointCounters] = field(default_factory=dict)
    # (monotonic time, total, {endpoint key: decisions}) snapshots for the rates
    _history: deque[tuple[float, int, dict[str, int]]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        # A first snapshot at start: until `window_s` has passed between two reads, the rate
        # is the average since start (so a single `epp top --once` shows a real number).
        self._history.append((time.monotonic(), 0, {}))

    # --- ServerObserver ---------------------------------------------------------------------
    def on_decision(self, request: LLMRequest, result: SchedulingResult, seconds: float) -> None:
        primary = result.primary
        if primary is None or not primary.targets:
            return
        self.total += 1
        key = primary.targets[0].key
        c = self.per_endpoint.get(key)
        if c is None:
            c = self.per_endpoint[key] = EndpointCounters()
        c.decisions += 1

    def on_rejected(self, request: LLMRequest | None, error: RequestError) -> None:
        self.errors += 1

    def on_complete(self, request: LLMRequest, target: Endpoint, response: dict[str, Any],
                    seconds: float) -> None:
        prompt, cached = response.get("prompt_tokens"), response.get("cached_tokens")
        if isinstance(prompt, int) and isinstance(cached, int) and prompt > 0:
            c = self.per_endpoint.get(target.key)
            if c is None:
                c = self.per_endpoint[target.key] = EndpointCounters()
            c.prompt_tokens += prompt
            c.cached_tokens += min(cached, prompt)
            c.usage_responses += 1

    # --- reading ----------------------------------------------------------------------------
    def rates(self, now: float | None = None) -> tuple[float, dict[str, float]]:
        """Decisions per second over about the last `window_s` (pool, per endpoint key)."""
        now = time.monotonic() if now is None else now
        snap = (now, self.total, {k: c.decisions for k, c in self.per_endpoint.items()})
        hist = self._history
        hist.append(snap)
        while len(hist) > 2 and now - hist[1][0] >= self.window_s:
            hist.popleft()
        t0, total0, per0 = hist[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, {}
        return ((self.total - total0) / dt,
                {k: (n - per0.get(k, 0)) / dt for k, n in snap[2].items()})

    def hit_rate(self) -> float:
        prompt = sum(c.prompt_tokens for c in self.per_endpoint.values())
        cached = sum(c.cached_tokens for c in self.per_endpoint.values())
        return cached / prompt if prompt > 0 else -1.0


class TeeObserver:
    """Several ServerObservers as one (the metrics observer first)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = observers

    def on_decision(self, request: LLMRequest, result: SchedulingResult, seconds: float) -> None:
        for o in self.observers:
            o.on_decision(request, result, seconds)

    def on_rejected(self, request: LLMRequest | None, error: RequestError) -> None:
        for o in self.observers:
            o.on_rejected(request, error)

    def on_complete(self, request: LLMRequest, target: Endpoint, response: dict[str, Any],
                    seconds: float) -> None:
        for o in self.observers:
            o.on_complete(request, target, response, seconds)

    def observe_plugin(self, extension_point: str, plugin_type: str, plugin_name: str,
                       duration_ns: int) -> None:
        first = self.observers[0] if self.observers else None
        if first is not None and hasattr(first, "observe_plugin"):
            first.observe_plugin(extension_point, plugin_type, plugin_name, duration_ns)
