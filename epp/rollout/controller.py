"""Rollouts: applies the pool's InferenceModelRewrites to requests, feeds the SLO guard and
exports what it does.

Per request (ExtProcHandler, after the body is parsed): the rule for the requested model
(RewriteStore), its effective weights (configured, or the operator's pin, with rolled-back
canaries moved to stable), then the target: sticky by the first non-empty `stickyHeaders`
value (weighted rendezvous hashing, epp/rollout/assign.py) or weighted random without one.
The request's target_model becomes the target; the server rewrites the body's `model`.
When the request ends, its status and time to first byte go to the rule's guard.

Metrics (prometheus, the EPP's /metrics):
- inference_extension_model_rewrite_decisions_total{model_rewrite_name, model_name, target_model}
  (GIE / llm-d's name and labels);
- epp_rollout_effective_weight{model_rewrite_name, rule, target_model}: the weight in use;
- epp_rollout_rollbacks_total{model_rewrite_name, rule, target_model, reason}: guard rollbacks
  (reason error_rate | ttft_p95);
- epp_rollout_window_error_rate / epp_rollout_window_ttft_p95_seconds{model_rewrite_name, rule,
  target_model}: what the guard saw at its last evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.rollout.assign import random_index, sticky_index
from epp.rollout.config import RewritePolicy, RolloutPolicy
from epp.rollout.guard import RuleGuard
from epp.rollout.store import RewriteStore, RuleRef
from epp.scheduling.types import LLMRequest

log = logging.getLogger("epp.rollout")

_LABELS = ["model_rewrite_name", "rule", "target_model"]
MAX_MODEL_SERIES = 256  # (model, target) label pairs per rule, as EPPMetrics' max_model_series
OTHER_MODEL = "__other__"


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            "Total number of inference model rewrite decisions.",
            ["model_rewrite_name", "model_name", "target_model"], registry=r)
        self.effective_weight = Gauge(
            "epp_rollout_effective_weight",
            "Weight in use for each target of an InferenceModelRewrite rule (after pins and "
            "SLO-guard rollbacks).", _LABELS, registry=r)
        self.rollbacks = Counter(
            "epp_rollout_rollbacks_total",
            "Canary targets rolled back to the stable target by the SLO guard.",
            [*_LABELS, "reason"], registry=r)
        self.window_error_rate = Gauge(
            "epp_rollout_window_error_rate",
            "Error rate (5xx) of a rewrite target over the SLO guard's window, at its last evaluation.",
            _LABELS, registry=r)
        self.window_ttft_p95 = Gauge(
            "epp_rollout_window_ttft_p95_seconds",
            "p95 time to first byte of a rewrite target over the SLO guard's window, at its last "
            "evaluation.", _LABELS, registry=r)


class _RuleState:
    """One rule under one policy: its weights, its guard, cached metric children."""

    __slots__ = (
        "configured_guard",
        "decisions",
        "effective",
        "evaluations",
        "guard",
        "labels",
        "pinned",
        "policy",
        "ref",
        "weights",
    )

    def __init__(self, ref: RuleRef, policy: RewritePolicy | None, rollout: RolloutPolicy,
                 clock: Callable[[], float]) -> None:
        self.ref = ref
        self.policy = policy
        self.pinned = policy is not None and policy.pinned_weights is not None
        self.weights = policy.pinned_weights if policy is not None and policy.pinned_weights else ref.rule.weights()
        stable = self._stable(policy)
        params = self.configured_guard = rollout.guard_for(ref.rewrite.name)
        if self.pinned and params.enabled:
            # A pin is the operator's decision: the guard keeps measuring but does not act.
            params = replace(params, enabled=False)
        self.guard = RuleGuard(params, stable, tuple(t for t, _ in self.weights), clock)
        self.effective = self.weights
        self.decisions: dict[tuple[str, str], Any] = {}
        self.evaluations = 0
        self.labels = (ref.rewrite.name, str(ref.index))

    def _stable(self, policy: RewritePolicy | None) -> str:
        names = [t for t, _ in self.weights]
        if policy is not None and policy.stable_model:
            if policy.stable_model in names:
                return policy.stable_model
            log.warning("rollouts: stableModel %r of InferenceModelRewrite %r is not one of its "
                        "targets %s; using the target with the largest weight",
                        policy.stable_model, self.ref.rewrite.name, names)
        best = max(range(len(self.weights)), key=lambda i: (self.weights[i][1], -i))
        return self.weights[best][0]

    def signature(self) -> tuple[Any, ...]:
        return (self.ref.rule, self.policy, self.configured_guard)


@dataclass(slots=True)
class Decision:
    """What the request was assigned; handed back to `observe` when it ends."""

    state: _RuleState
    target: str
    sticky: bool


class Rollouts:
    def __init__(self, store: RewriteStore, policy: RolloutPolicy | None = None,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.store = store
        self.policy = policy if policy is not None else RolloutPolicy()
        self.metrics = RolloutMetrics(registry)
        self.clock = clock
        self.rng = rng
        self._states: dict[tuple[str, int], _RuleState] = {}
        self._seen: tuple[int, int] = (-1, -1)
        self._policy_gen = 0
        store.listeners.append(self._refresh)
        self._refresh()

    # --- configuration ------------------------------------------------------------------
    def set_policy(self, policy: RolloutPolicy) -> None:
        """A reloaded EPP config: rules whose policy changed start a fresh guard."""
        if policy != self.policy:
            self.policy = policy
            self._policy_gen += 1
            self._refresh()

    def _refresh(self) -> None:
        """Rebuild rule states after a rewrite or policy change, keeping the guard (and its
        rollbacks) of every rule whose weights and policy did not change."""
        old = self._states
        new: dict[tuple[str, int], _RuleState] = {}
        for rewrite in self.store.rewrites():
            for i, rule in enumerate(rewrite.rules):
                ref = RuleRef(rewrite, i, rule)
                policy = self.policy.rewrites.get(rewrite.name)
                prev = old.get(ref.key)
                if prev is not None and prev.signature() == (rule, policy, self.policy.guard_for(rewrite.name)):
                    prev.ref = ref
                    new[ref.key] = prev
                    continue
                state = _RuleState(ref, policy, self.policy, self.clock)
                new[ref.key] = state
                if prev is not None and prev.guard.rolled_back:
                    log.info("rollouts: %s rule %d changed (weights %s); the guard starts over",
                             rewrite.name, i, dict(state.weights))
                self._export_weights(state)
        for key, state in old.items():
            if new.get(key) is not state:
                self._forget(state, new.get(key))
        self._states = new
        self._seen = (self.store.generation, self._policy_gen)

    def _export_weights(self, state: _RuleState) -> None:
        for target, weight in state.effective:
            self.metrics.effective_weight.labels(*state.labels, target).set(weight)

    def _forget(self, state: _RuleState, successor: _RuleState | None) -> None:
        keep = {t for t, _ in successor.effective} if successor is not None else set()
        for target, _ in state.effective:
            if target in keep:
                continue
            for gauge in (self.metrics.effective_weight, self.metrics.window_error_rate,
                          self.metrics.window_ttft_p95):
                with contextlib.suppress(KeyError):
                    gauge.remove(*state.labels, target)

    # --- per request --------------------------------------------------------------------
    def assign(self, request: LLMRequest) -> Decision | None:
        """Set request.target_model from the rule for request.model (None: no rule)."""
        ref = self.store.rule(request.model)
        if ref is None:
            return None
        if self._seen != (self.store.generation, self._policy_gen):
            self._refresh()
        state = self._states.get(ref.key)
        if state is None:
            return None
        weights = state.effective
        key = ""
        headers = request.headers
        for name in self.policy.sticky_headers:
            value = headers.get(name)
            if value:
                key = value
                break
        if key:
            index = sticky_index(f"{ref.rewrite.name}\0{ref.index}\0{key}", weights)
        else:
            index = random_index(weights, self.rng)
        if index < 0:
            return None
        target = weights[index][0]
        request.target_model = target
        child = state.decisions.get((request.model, target))
        if child is None:
            # A generic rule matches any client-sent model name: past MAX_MODEL_SERIES names
            # the label folds into "__other__", so clients cannot grow the series without bound.
            model = request.model if len(state.decisions) < MAX_MODEL_SERIES else OTHER_MODEL
            child = self.metrics.decisions.labels(ref.rewrite.name, model, target)
            if model is not OTHER_MODEL:
                state.decisions[(request.model, target)] = child
        child.inc()
        return Decision(state, target, bool(key))

    def observe(self, decision: Decision, status: int, ttft_s: float) -> None:
        """The request ended: `status` 0 means the EPP never saw the response headers."""
        if status <= 0:
            return
        state = decision.state
        guard = state.guard
        verdicts = guard.observe(decision.target, status >= 500, ttft_s)
        if guard.evaluations != state.evaluations:
            state.evaluations = guard.evaluations
            for target, stats in guard.last_stats.items():
                self.metrics.window_error_rate.labels(*state.labels, target).set(stats.error_rate)
                if not math.isnan(stats.ttft_p95):
                    self.metrics.window_ttft_p95.labels(*state.labels, target).set(stats.ttft_p95)
        if not verdicts:
            return
        state.effective = guard.effective(state.weights)
        self._export_weights(state)
        for v in verdicts:
            self.metrics.rollbacks.labels(*state.labels, v.target, v.reason).inc()
            log.warning(
                "rollouts: rolled back %s (InferenceModelRewrite %s rule %d) to %s: %s; canary "
                "%d requests, error rate %.3f, TTFT p95 %.3fs; stable %d requests, error rate %.3f, "
                "TTFT p95 %.3fs; effective weights now %s",
                v.target, state.ref.rewrite.name, state.ref.index, guard.stable, v.reason,
                v.canary.requests, v.canary.error_rate, v.canary.ttft_p95,
                v.stable.requests, v.stable.error_rate, v.stable.ttft_p95, dict(state.effective))

    def status(self) -> list[dict[str, Any]]:
        """Every rule's weights and guard state (for logs, debugging and tests)."""
        if self._seen != (self.store.generation, self._policy_gen):
            self._refresh()
        return [{"rewrite": s.ref.rewrite.name, "rule": s.ref.index, "stable": s.guard.stable,
                 "pinned": s.pinned, "configured": dict(s.weights), "effective": dict(s.effective),
                 "rolledBack": dict(s.guard.rolled_back)} for s in self._states.values()]
