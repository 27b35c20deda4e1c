"""The SLO guard: compares each canary target with the stable target of its rule over a
sliding window, and rolls the canary back (its weight to the stable target) when it breaks a
threshold.

Signals, per completed request the EPP routed with a rewrite:
- an error: HTTP status >= 500 from the pod (4xx are the client's; a request whose response
  headers the EPP never saw, status 0, is not counted at all);
- time to first byte: the EPP's decision to the response headers coming back through
  ext_proc (Envoy must send response headers: `response_header_mode: SEND`). For a streamed
  completion that is the time to the first token; for a non-streamed one, the whole latency.

A target is judged only once both it and the stable target have `minRequests` samples in the
window (the TTFT rule: `minTtftSamples` time samples each). Breaches (either is enough):
- error rate:   canary_rate - stable_rate > maxErrorRateDelta;
- TTFT p95:     canary_p95 > stable_p95 * maxTtftP95Ratio and canary_p95 - stable_p95 >
                minTtftP95DeltaSeconds (so microsecond noise on a fast pool never trips it).
A rollback holds until the operator edits the rule's weights (a new rollout step) or pins
weights; the guard never ramps a canary back up by itself.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

REASON_ERROR_RATE = "error_rate"
REASON_TTFT = "ttft_p95"


@dataclass(slots=True)
class GuardParams:
    """Thresholds; the EPP config's `rollouts.guard` (camelCase), overridable per rewrite."""

    enabled: bool = True
    window_seconds: float = 60.0
    min_requests: int = 20
    max_error_rate_delta: float = 0.05
    max_ttft_p95_ratio: float = 1.5
    min_ttft_p95_delta_seconds: float = 0.05
    # The TTFT rule needs more samples than the error rule: the p95 of 20 samples is their
    # slowest one, which on a busy pool is noise (a false rollback), not a signal.
    min_ttft_samples: int = 100
    evaluation_interval_seconds: float = 1.0
    max_samples: int = 10_000  # per target and window: bounds memory and the p95 sort

    def validate(self) -> None:
        if not self.window_seconds > 0:
            raise ValueError(f"windowSeconds must be > 0, got {self.window_seconds}")
        if self.min_requests < 1:
            raise ValueError(f"minRequests must be >= 1, got {self.min_requests}")
        if not 0 <= self.max_error_rate_delta <= 1:
            raise ValueError(f"maxErrorRateDelta must be in [0, 1], got {self.max_error_rate_delta}")
        if not self.max_ttft_p95_ratio >= 1:
            raise ValueError(f"maxTtftP95Ratio must be >= 1, got {self.max_ttft_p95_ratio}")
        if self.min_ttft_p95_delta_seconds < 0:
            raise ValueError(f"minTtftP95DeltaSeconds must be >= 0, got {self.min_ttft_p95_delta_seconds}")
        if self.evaluation_interval_seconds < 0:
            raise ValueError(f"evaluationIntervalSeconds must be >= 0, got {self.evaluation_interval_seconds}")
        if self.min_ttft_samples < 1:
            raise ValueError(f"minTtftSamples must be >= 1, got {self.min_ttft_samples}")
        if self.max_samples < max(self.min_requests, self.min_ttft_samples):
            raise ValueError(f"maxSamples must be >= minRequests and minTtftSamples, got {self.max_samples}")


@dataclass(slots=True)
class WindowStats:
    requests: int
    error_rate: float
    ttft_p95: float  # seconds; nan without TTFT samples
    ttft_samples: int = 0


class TargetWindow:
    """The last `window` seconds of one target: (time, error, ttft) samples."""

    __slots__ = ("errors", "samples", "window")

    def __init__(self, window: float, max_samples: int) -> None:
        self.window = window
        self.samples: deque[tuple[float, bool, float]] = deque(maxlen=max_samples)
        self.errors = 0

    def add(self, now: float, error: bool, ttft: float) -> None:
        if len(self.samples) == self.samples.maxlen and self.samples[0][1]:
            self.errors -= 1  # the oldest sample falls out of the bounded deque
        self.samples.append((now, error, ttft))
        self.errors += error
        self.trim(now)

    def trim(self, now: float) -> None:
        horizon = now - self.window
        samples = self.samples
        while samples and samples[0][0] < horizon:
            if samples.popleft()[1]:
                self.errors -= 1

    def stats(self) -> WindowStats:
        n = len(self.samples)
        if n == 0:
            return WindowStats(0, 0.0, math.nan)
        ttfts = sorted(s[2] for s in self.samples if s[2] >= 0)
        p95 = ttfts[min(len(ttfts) - 1, math.ceil(0.95 * len(ttfts)) - 1)] if ttfts else math.nan
        return WindowStats(n, self.errors / n, p95, len(ttfts))


@dataclass(slots=True)
class Verdict:
    target: str
    reason: str
    canary: WindowStats
    stable: WindowStats


class RuleGuard:
    """Guard state of one rule for one set of configured weights."""

    def __init__(self, params: GuardParams, stable: str, targets: tuple[str, ...],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self.stable = stable
        self.clock = clock
        self.windows = {t: TargetWindow(params.window_seconds, params.max_samples) for t in targets}
        self.rolled_back: dict[str, str] = {}  # target -> reason
        self._next_eval = 0.0
        self.last_stats: dict[str, WindowStats] = {}
        self.evaluations = 0

    def observe(self, target: str, error: bool, ttft: float) -> list[Verdict]:
        """Record one outcome; returns the canaries that broke a threshold just now."""
        window = self.windows.get(target)
        if window is None:
            return []
        now = self.clock()
        window.add(now, error, ttft)
        if now < self._next_eval:
            return []
        self._next_eval = now + self.params.evaluation_interval_seconds
        return self.evaluate(now)

    def evaluate(self, now: float) -> list[Verdict]:
        p = self.params
        for w in self.windows.values():
            w.trim(now)
        self.last_stats = {t: w.stats() for t, w in self.windows.items()}
        self.evaluations += 1
        stable = self.last_stats.get(self.stable)
        if not p.enabled or stable is None or stable.requests < p.min_requests:
            return []
        out: list[Verdict] = []
        for target, stats in self.last_stats.items():
            if target == self.stable or target in self.rolled_back or stats.requests < p.min_requests:
                continue
            reason = ""
            if stats.error_rate - stable.error_rate > p.max_error_rate_delta:
                reason = REASON_ERROR_RATE
            elif (min(stats.ttft_samples, stable.ttft_samples) >= p.min_ttft_samples
                  and stats.ttft_p95 > stable.ttft_p95 * p.max_ttft_p95_ratio
                  and stats.ttft_p95 - stable.ttft_p95 > p.min_ttft_p95_delta_seconds):
                reason = REASON_TTFT
            if reason:
                self.rolled_back[target] = reason
                out.append(Verdict(target, reason, stats, stable))
        return out

    def effective(self, weights: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
        """The configured weights with every rolled-back canary's weight moved to stable."""
        if not self.rolled_back:
            return weights
        moved = sum(w for t, w in weights if t in self.rolled_back)
        return tuple((t, 0.0 if t in self.rolled_back else w + (moved if t == self.stable else 0.0))
                     for t, w in weights)
