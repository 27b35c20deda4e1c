"""Rollouts end to end in-process: assignment through the store, live weight changes, the SLO
guard's rollback (error rate, TTFT), pins, and what /metrics shows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from epp.flowcontrol.tenants import ApiKeyAuth
from epp.rollout.api import parse_model_rewrite
from epp.rollout.config import parse_rollout_policy
from epp.rollout.controller import Rollouts
from epp.rollout.guard import GuardParams, RuleGuard
from epp.rollout.store import RewriteStore
from epp.scheduling.registry import ConfigError
from epp.scheduling.types import LLMRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rewrite(stable: int, canary: int, name: str = "canary") -> object:
    return parse_model_rewrite({
        "metadata": {"name": name},
        "spec": {"poolRef": {"name": "pool"}, "rules": [{
            "matches": [{"model": {"value": "llama"}}],
            "targets": [{"modelRewrite": "llama-v1", "weight": stable},
                        {"modelRewrite": "llama-v2", "weight": canary}]}]}})


def _setup(policy: dict | None = None, stable: int = 90, canary: int = 10):  # type: ignore[no-untyped-def,type-arg]
    store = RewriteStore()
    store.set(_rewrite(stable, canary))  # type: ignore[arg-type]
    registry = CollectorRegistry()
    clock = Clock()
    ro = Rollouts(store, parse_rollout_policy(policy), registry, clock=clock, rng=random.Random(1))
    return store, ro, registry, clock


def _req(user: str = "", model: str = "llama") -> LLMRequest:
    return LLMRequest(request_id="r", model=model, target_model=model,
                      headers={"x-user-id": user} if user else {})


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_assigns_sticky_by_header_and_counts_decisions() -> None:
    _, ro, registry, _ = _setup({"stickyHeaders": ["X-User-Id"]})
    picks = {}
    for i in range(2000):
        r = _req(f"user-{i}")
        assert ro.assign(r) is not None
        picks[i] = r.target_model
        again = _req(f"user-{i}")
        ro.assign(again)
        assert again.target_model == r.target_model  # each user stays on one side
    share = sum(t == "llama-v2" for t in picks.values()) / 2000
    assert abs(share - 0.10) <= 0.03
    total = sum(_value(registry, "inference_extension_model_rewrite_decisions_total",
                       model_rewrite_name="canary", model_name="llama", target_model=t) or 0
                for t in ("llama-v1", "llama-v2"))
    assert total == 4000
    assert _value(registry, "epp_rollout_effective_weight", model_rewrite_name="canary", rule="0",
                  target_model="llama-v2") == 10
    other = _req("user-1", model="mistral")
    assert ro.assign(other) is None and other.target_model == "mistral"


def test_weights_change_live_and_only_needed_users_move() -> None:
    store, ro, registry, _ = _setup({"stickyHeaders": ["x-user-id"]})
    before = {}
    for i in range(2000):
        r = _req(f"u{i}")
        ro.assign(r)
        before[i] = r.target_model
    store.set(_rewrite(80, 20))  # type: ignore[arg-type]  # the operator edits the rewrite
    moved = 0
    for i in range(2000):
        r = _req(f"u{i}")
        ro.assign(r)
        if before[i] == "llama-v2":
            assert r.target_model == "llama-v2"
        moved += r.target_model != before[i]
    assert abs(moved / 2000 - 0.10) <= 0.03
    assert _value(registry, "epp_rollout_effective_weight", model_rewrite_name="canary", rule="0",
                  target_model="llama-v2") == 20


def _drive(ro: Rollouts, clock: Clock, n: int, canary_status: int = 200, canary_ttft: float = 0.1) -> None:
    for _ in range(n):
        r = _req()
        d = ro.assign(r)
        assert d is not None
        clock.now += 0.01
        if r.target_model == "llama-v2":
            ro.observe(d, canary_status, canary_ttft)
        else:
            ro.observe(d, 200, 0.1)


GUARD = {"guard": {"minRequests": 10, "minTtftSamples": 50, "windowSeconds": 30, "evaluationIntervalSeconds": 0}}


def test_error_rate_breach_rolls_the_canary_back_and_shows_in_metrics(caplog: pytest.LogCaptureFixture) -> None:
    _, ro, registry, clock = _setup(GUARD, stable=50, canary=50)
    _drive(ro, clock, 100, canary_status=503)
    labels = {"model_rewrite_name": "canary", "rule": "0"}
    assert _value(registry, "epp_rollout_rollbacks_total", **labels, target_model="llama-v2",
                  reason="error_rate") == 1
    assert _value(registry, "epp_rollout_effective_weight", **labels, target_model="llama-v2") == 0
    assert _value(registry, "epp_rollout_effective_weight", **labels, target_model="llama-v1") == 100
    assert "rolled back llama-v2" in caplog.text and "error_rate" in caplog.text
    for _ in range(200):  # after the rollback nobody reaches the canary
        r = _req()
        ro.assign(r)
        assert r.target_model == "llama-v1"
    (status,) = ro.status()
    assert status["rolledBack"] == {"llama-v2": "error_rate"}
    text = generate_latest(registry).decode()
    assert 'epp_rollout_window_error_rate{model_rewrite_name="canary",rule="0",target_model="llama-v2"} 1.0' in text


def test_ttft_breach_rolls_back_but_small_differences_do_not() -> None:
    _, ro, registry, clock = _setup(GUARD, stable=50, canary=50)
    _drive(ro, clock, 60, canary_ttft=0.5)  # far slower, but fewer than minTtftSamples: no verdict yet
    assert not ro.status()[0]["rolledBack"]
    clock.now += 100  # a fresh window
    _drive(ro, clock, 200, canary_ttft=0.12)  # 1.2x: within 1.5x
    assert not ro.status()[0]["rolledBack"]
    _drive(ro, clock, 300, canary_ttft=0.5)
    assert ro.status()[0]["rolledBack"] == {"llama-v2": "ttft_p95"}
    assert _value(registry, "epp_rollout_rollbacks_total", model_rewrite_name="canary", rule="0",
                  target_model="llama-v2", reason="ttft_p95") == 1


def test_rollback_holds_until_the_weights_are_edited() -> None:
    store, ro, _, clock = _setup(GUARD, stable=50, canary=50)
    _drive(ro, clock, 100, canary_status=500)
    assert ro.status()[0]["effective"] == {"llama-v1": 100.0, "llama-v2": 0.0}
    clock.now += 100
    _drive(ro, clock, 50)
    assert ro.status()[0]["effective"]["llama-v2"] == 0.0  # the guard never ramps back up
    store.set(_rewrite(95, 5))  # type: ignore[arg-type]  # a new rollout step
    assert ro.status()[0]["effective"] == {"llama-v1": 95.0, "llama-v2": 5.0}


def test_pinned_weights_override_the_guard_and_the_rewrite() -> None:
    policy = {**GUARD, "rewrites": [{"name": "canary", "pinnedWeights": {"llama-v1": 50, "llama-v2": 50}}]}
    _, ro, registry, clock = _setup(policy)
    _drive(ro, clock, 200, canary_status=500)
    (status,) = ro.status()
    assert status["pinned"] and not status["rolledBack"]
    assert status["effective"] == {"llama-v1": 50.0, "llama-v2": 50.0}
    # ... yet the guard still measures, so the operator sees the canary failing.
    assert _value(registry, "epp_rollout_window_error_rate", model_rewrite_name="canary", rule="0",
                  target_model="llama-v2") == 1.0


def test_guard_disabled_per_rewrite_and_policy_reload_resets() -> None:
    policy = {**GUARD, "rewrites": [{"name": "canary", "guard": {"enabled": False}}]}
    _, ro, _, clock = _setup(policy, stable=50, canary=50)
    _drive(ro, clock, 100, canary_status=500)
    assert not ro.status()[0]["rolledBack"]
    ro.set_policy(parse_rollout_policy(GUARD))
    _drive(ro, clock, 100, canary_status=500)
    assert ro.status()[0]["rolledBack"] == {"llama-v2": "error_rate"}


def test_stable_model_is_configurable() -> None:
    policy = {**GUARD, "rewrites": [{"name": "canary", "stableModel": "llama-v2"}]}
    _, ro, _, _ = _setup(policy)
    assert ro.status()[0]["stable"] == "llama-v2"
    _, ro, _, _ = _setup(GUARD)
    assert ro.status()[0]["stable"] == "llama-v1"  # default: the largest weight


def test_status_zero_is_not_a_sample_and_min_requests_gate() -> None:
    guard = RuleGuard(GuardParams(min_requests=10, evaluation_interval_seconds=0), "a", ("a", "b"),
                      clock=Clock())
    for _ in range(9):
        guard.observe("a", False, 0.1)
        assert guard.observe("b", True, 0.1) == []  # fewer than minRequests: no verdict
    assert guard.observe("a", False, 0.1) == []
    (verdict,) = guard.observe("b", True, 0.1)
    assert verdict.reason == "error_rate" and verdict.canary.requests == 10


def test_window_forgets_old_samples() -> None:
    clock = Clock()
    guard = RuleGuard(GuardParams(window_seconds=10, min_requests=5, evaluation_interval_seconds=0),
                      "a", ("a", "b"), clock=clock)
    for _ in range(5):
        guard.observe("b", True, 0.1)
    clock.now += 11
    for _ in range(5):
        guard.observe("a", False, 0.1)
        guard.observe("b", False, 0.1)
    assert not guard.rolled_back and guard.last_stats["b"].error_rate == 0.0


@pytest.mark.parametrize("raw, message", [
    ({"guard": {"windowSeconds": 0}}, "rollouts.guard: windowSeconds must be > 0"),
    ({"guard": {"maxTtftP95Ratio": 0.5}}, "maxTtftP95Ratio must be >= 1"),
    ({"guard": {"bogus": 1}}, "unknown parameter 'bogus'"),
    ({"stickyHeaders": "x-user"}, "stickyHeaders: must be a list"),
    ({"rewrites": [{"name": "a", "pinnedWeights": {"x": -1}}]}, "pinnedWeights.x: must be a number >= 0"),
    ({"rewrites": [{"name": "a", "pinnedWeights": {"x": 0}}]}, "at least one weight must be > 0"),
    ({"rewrites": [{"name": "a"}, {"name": "a"}]}, "configured twice"),
    ({"rewrites": [{"name": "a", "guard": {"minRequests": 0}}]}, "rewrites[0].guard: minRequests must be >= 1"),
    ({"other": 1}, "unknown field 'other'"),
])
def test_policy_errors_name_the_field(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as e:
        parse_rollout_policy(raw, "epp.yaml")
    assert str(e.value).startswith("epp.yaml: rollouts") and message in str(e.value)


def test_sticky_on_the_authenticated_tenant_not_on_a_forged_header(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    tenants = [{"name": f"tenant-{i}", "keys": [f"sk-{i}"]} for i in range(400)]
    keys.write_text(yaml.safe_dump({"tenants": tenants}))
    auth = ApiKeyAuth(keys)
    _, ro, _, _ = _setup({"stickyHeaders": ["x-gateway-inference-tenant"]})
    sides = {}
    for i in range(400):
        for forged in ("tenant-0", "tenant-399"):  # a client-sent tenant header is overwritten
            headers = {"authorization": f"Bearer sk-{i}", "x-gateway-inference-tenant": forged}
            auth.authenticate(headers)
            r = LLMRequest(request_id="r", model="llama", target_model="llama", headers=headers)
            assert ro.assign(r) is not None and ro.assign(r).sticky  # type: ignore[union-attr]
            sides.setdefault(i, set()).add(r.target_model)
    assert all(len(s) == 1 for s in sides.values())  # each tenant on one side
    canary = sum("llama-v2" in s for s in sides.values()) / 400
    assert 0.05 <= canary <= 0.15



def test_decision_series_per_model_and_bounded_for_generic_rules() -> None:
    store = RewriteStore()
    store.set(parse_model_rewrite({"metadata": {"name": "fallback"}, "spec": {
        "poolRef": {"name": "pool"}, "rules": [{"targets": [{"modelRewrite": "base"}]}]}}))
    registry = CollectorRegistry()
    ro = Rollouts(store, registry=registry)
    for model in ("a", "b", "a"):
        ro.assign(_req(model=model))
    assert _value(registry, "inference_extension_model_rewrite_decisions_total", model_rewrite_name="fallback",
                  model_name="a", target_model="base") == 2
    assert _value(registry, "inference_extension_model_rewrite_decisions_total", model_rewrite_name="fallback",
                  model_name="b", target_model="base") == 1
    for i in range(1000):  # client-chosen names: the series count stays bounded
        r = _req(model=f"junk-{i}")
        ro.assign(r)
        assert r.target_model == "base"
    names = {s.labels["model_name"] for m in registry.collect() for s in m.samples
             if s.name == "inference_extension_model_rewrite_decisions_total"}
    assert len(names) <= 257 and "__other__" in names


def test_global_guard_change_applies_to_running_rules() -> None:
    _, ro, _, clock = _setup(GUARD, stable=50, canary=50)
    ro.set_policy(parse_rollout_policy({"guard": {**GUARD["guard"], "enabled": False}}))
    _drive(ro, clock, 100, canary_status=500)
    assert not ro.status()[0]["rolledBack"]
