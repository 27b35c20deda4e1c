"""A scheduling profile: filters, then weighted scorers, then a picker.

The profile is the unit a ProfileHandler runs (e.g. a "decode" and a "prefill" profile for
disaggregated serving). Scores of each scorer are in [0, 1]; the profile multiplies them by
the scorer's weight and sums them per endpoint, then hands the totals to the picker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from time import perf_counter_ns

from epp.datastore.endpoint import Endpoint
from epp.scheduling.interfaces import Filter, Picker, PluginTimingObserver, Scorer, ScoresPicker
from epp.scheduling.trace import FilterStep, ProfileTrace, ScorerStep
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint

log = logging.getLogger(__name__)


class SchedulerProfile:
    """Runs filters -> scorers -> picker over the candidate endpoints of one request."""

    __slots__ = ("_keys_cache", "_keys_of", "_misbehaving", "_pick_scores", "filters", "name", "observer",
                 "picker", "scorers")

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
        observer: PluginTimingObserver | None = None,
    ) -> None:
        for scorer, weight in scorers:
            if weight < 0 or math.isnan(weight):
                raise ValueError(
                    f"profile {name!r}: scorer {scorer.name!r} has weight {weight}; "
                    "weights must be >= 0"
                )
        self.name = name
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.scorers: tuple[tuple[Scorer, float], ...] = tuple((s, float(w)) for s, w in scorers)
        self.picker = picker
        self.observer = observer
        # Scorers already reported for out-of-range output: log once, not per request.
        self._misbehaving: set[str] = set()
        # A picker with the ScoresPicker fast path gets the totals without per-endpoint
        # ScoredEndpoint objects.
        self._pick_scores = picker.pick_scores if isinstance(picker, ScoresPicker) else None
        self._keys_of: Sequence[Endpoint] | None = None
        self._keys_cache: list[str] = []

    def __repr__(self) -> str:
        scorers = ", ".join(f"{s.name}*{w:g}" for s, w in self.scorers)
        filters = ", ".join(f.name for f in self.filters)
        return (
            f"SchedulerProfile({self.name!r}, filters=[{filters}], scorers=[{scorers}], "
            f"picker={self.picker.name})"
        )

    def run(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> ProfileRunResult | None:
        """Pick targets among `endpoints`; None when the filters leave no endpoint."""
        observer = self.observer
        for flt in self.filters:
            if observer is None:
                endpoints = flt.filter(state, request, endpoints)
            else:
                t0 = perf_counter_ns()
                endpoints = flt.filter(state, request, endpoints)
                observer.observe_plugin("Filter", flt.type_name, flt.name, perf_counter_ns() - t0)
            if not endpoints:
                return None
        if not endpoints:
            return None

        n = len(endpoints)
        totals = [0.0] * n
        for scorer, weight in self.scorers:
            if observer is None:
                scores = scorer.score(state, request, endpoints)
            else:
                t0 = perf_counter_ns()
                scores = scorer.score(state, request, endpoints)
                observer.observe_plugin("Scorer", scorer.type_name, scorer.name, perf_counter_ns() - t0)
            if len(scores) != n:
                scores = self._misbehaved_length(scorer, scores, n)
            # One C-level pass each catches NaN (total != total) and out-of-range values;
            # the per-element clamp only runs for a misbehaving scorer.
            total = sum(scores)
            if min(scores) < 0.0 or max(scores) > 1.0 or total != total:
                scores = self._clamped(scorer, scores)
            if weight == 1.0:
                totals = [t + s for t, s in zip(totals, scores, strict=True)]
            elif weight != 0.0:
                totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]

        picker = self.picker
        pick_scores = self._pick_scores
        t0 = perf_counter_ns() if observer is not None else 0
        if pick_scores is not None:
            result = pick_scores(state, request, endpoints, totals)
        else:
            scored = [ScoredEndpoint(ep, t) for ep, t in zip(endpoints, totals, strict=True)]
            result = picker.pick(state, request, scored)
        if observer is not None:
            observer.observe_plugin("Picker", picker.type_name, picker.name, perf_counter_ns() - t0)
        if not result.targets:
            return None
        result.scores = dict(zip(self._keys(endpoints), totals, strict=True))
        return result

    def run_traced(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint], trace: ProfileTrace
    ) -> ProfileRunResult | None:
        """`run` that records every step into `trace` (explain and sampled live decisions).

        A separate path so `run` stays untouched; it must decide exactly as `run` does
        (tests/unit/admin/test_explain.py runs both on the same state and compares). It skips
        the plugin-timing observer: an explained decision is not a hot-path sample.
        """
        trace.candidates = list(endpoints)
        for flt in self.filters:
            kept = flt.filter(state, request, endpoints)
            if len(kept) != len(endpoints):
                survivors = {id(ep) for ep in kept}
                trace.filters.append(FilterStep(flt, [ep for ep in endpoints if id(ep) not in survivors]))
            endpoints = kept
            if not endpoints:
                trace.empty_reason = f"filter {flt.name!r} ({flt.type_name}) left no endpoint"
                return None
        if not endpoints:
            trace.empty_reason = "no candidate endpoint"
            return None
        trace.survivors = list(endpoints)
        n = len(endpoints)
        totals = [0.0] * n
        for scorer, weight in self.scorers:
            scores = scorer.score(state, request, endpoints)
            if len(scores) != n:
                scores = self._misbehaved_length(scorer, scores, n)
            if (min(scores) < 0.0 or max(scores) > 1.0 or sum(scores) != sum(scores)):
                scores = self._clamped(scorer, scores)
            trace.scorers.append(ScorerStep(scorer, weight, list(scores)))
            if weight == 1.0:
                totals = [t + s for t, s in zip(totals, scores, strict=True)]
            elif weight != 0.0:
                totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
        trace.totals = totals
        trace.picker = self.picker
        if self._pick_scores is not None:  # the same picker path as `run`
            result = self._pick_scores(state, request, endpoints, totals)
        else:
            scored = [ScoredEndpoint(ep, total) for ep, total in zip(endpoints, totals, strict=True)]
            result = self.picker.pick(state, request, scored)
        if not result.targets:
            trace.empty_reason = f"picker {self.picker.name!r} ({self.picker.type_name}) chose nothing"
            return None
        result.scores = {ep.key: total for ep, total in zip(endpoints, totals, strict=True)}
        trace.result = result
        return result
    def _keys(self, endpoints: Sequence[Endpoint]) -> list[str]:
        """Endpoint keys in order; cached for the datastore's snapshot tuple, which is the
        same object for every decision until the pool changes."""
        if endpoints is self._keys_of:
            return self._keys_cache
        keys = [ep.key for ep in endpoints]
        if type(endpoints) is tuple:  # immutable: identity is a safe cache key
            self._keys_of, self._keys_cache = endpoints, keys
        return keys

    def _clamped(self, scorer: Scorer, scores: Sequence[float]) -> list[float]:
        if scorer.name not in self._misbehaving:
            self._misbehaving.add(scorer.name)
            log.warning(
                "profile %r: scorer %r (%s) returned scores outside [0, 1] (%s); clamping "
                "(logged once)",
                self.name, scorer.name, scorer.type_name, list(scores)[:8],
            )
        return [0.0 if s != s else (0.0 if s < 0.0 else (1.0 if s > 1.0 else s)) for s in scores]

    def _misbehaved_length(self, scorer: Scorer, scores: Sequence[float], n: int) -> list[float]:
        if scorer.name not in self._misbehaving:
            self._misbehaving.add(scorer.name)
            log.warning(
                "profile %r: scorer %r (%s) returned %d scores for %d endpoints; padding with 0 "
                "(logged once)",
                self.name, scorer.name, scorer.type_name, len(scores), n,
            )
        fixed = list(scores[:n])
        fixed.extend([0.0] * (n - len(fixed)))
        return fixed
