"""The rollout policy: the EPP config's `rollouts:` section (hot-reloaded with the config).

    rollouts:
      stickyHeaders: [x-user-id, x-gateway-inference-tenant]  # first non-empty one is the key
      guard:                                  # GuardParams (epp/rollout/guard.py), defaults shown
        enabled: true
        windowSeconds: 60
        minRequests: 20
        maxErrorRateDelta: 0.05
        maxTtftP95Ratio: 1.5
        minTtftP95DeltaSeconds: 0.05
        minTtftSamples: 100
        evaluationIntervalSeconds: 1
      rewrites:                               # per InferenceModelRewrite (metadata.name)
      - name: llama-canary
        stableModel: llama-v1                 # default: the target with the largest weight
        pinnedWeights: {llama-v1: 80, llama-v2: 20}   # operator pin: used as is, guard off
        guard: {enabled: false}               # per-rewrite overrides of the guard fields

`x-gateway-inference-tenant` is the tenant the EPP authenticated from the API key
(epp/flowcontrol/tenants.py): a client cannot forge it, so sticking on it keeps each tenant
on one side. The section is optional: without it no header is sticky and the guard runs with
the defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.rollout.guard import GuardParams
from epp.scheduling.registry import ConfigError, parse_params

SECTION = "rollouts"
_TOP = ("stickyHeaders", "guard", "rewrites")
_REWRITE = ("name", "stableModel", "pinnedWeights", "guard")


@dataclass(frozen=True, slots=True)
class RewritePolicy:
    name: str
    stable_model: str = ""
    pinned_weights: tuple[tuple[str, float], ...] | None = None
    guard: GuardParams | None = None  # None: the global guard


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    sticky_headers: tuple[str, ...] = ()
    guard: GuardParams = field(default_factory=GuardParams)
    rewrites: Mapping[str, RewritePolicy] = field(default_factory=dict)

    def guard_for(self, rewrite: str) -> GuardParams:
        p = self.rewrites.get(rewrite)
        return p.guard if p is not None and p.guard is not None else self.guard


def parse_rollout_policy(raw: Any, source: str = "<config>") -> RolloutPolicy:
    where = f"{source}: {SECTION}"
    if raw is None:
        return RolloutPolicy()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    _keys(raw, _TOP, where)
    headers = raw.get("stickyHeaders") or []
    if not isinstance(headers, list) or not all(isinstance(h, str) and h.strip() for h in headers):
        raise ConfigError(f"{where}.stickyHeaders: must be a list of header names, got {headers!r}")
    guard_raw = raw.get("guard")
    if guard_raw is not None and not isinstance(guard_raw, dict):
        raise ConfigError(f"{where}.guard: must be a mapping, got {guard_raw!r}")
    guard = parse_params(GuardParams, guard_raw, f"{where}.guard")
    rewrites: dict[str, RewritePolicy] = {}
    entries = raw.get("rewrites") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.rewrites: must be a list, got {entries!r}")
    for i, entry in enumerate(entries):
        ew = f"{where}.rewrites[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{ew}: must be a mapping with 'name'")
        _keys(entry, _REWRITE, ew)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{ew}.name: must name an InferenceModelRewrite, got {name!r}")
        if name in rewrites:
            raise ConfigError(f"{ew}.name: {name!r} is configured twice")
        stable = entry.get("stableModel", "")
        if not isinstance(stable, str):
            raise ConfigError(f"{ew}.stableModel: must be a model name, got {stable!r}")
        pinned = entry.get("pinnedWeights")
        pins: tuple[tuple[str, float], ...] | None = None
        if pinned is not None:
            if not isinstance(pinned, dict) or not pinned:
                raise ConfigError(f"{ew}.pinnedWeights: must map target models to weights, got {pinned!r}")
            for model, weight in pinned.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                    raise ConfigError(f"{ew}.pinnedWeights.{model}: must be a number >= 0, got {weight!r}")
            if not any(w > 0 for w in pinned.values()):
                raise ConfigError(f"{ew}.pinnedWeights: at least one weight must be > 0")
            pins = tuple((str(m), float(w)) for m, w in pinned.items())
        override = entry.get("guard")
        rw_guard: GuardParams | None = None
        if override is not None:
            if not isinstance(override, dict):
                raise ConfigError(f"{ew}.guard: must be a mapping, got {override!r}")
            base = {_camel(f.name): getattr(guard, f.name) for f in dataclasses.fields(GuardParams)}
            rw_guard = parse_params(GuardParams, {**base, **override}, f"{ew}.guard")
        rewrites[name] = RewritePolicy(name, stable, pins, rw_guard)
    return RolloutPolicy(tuple(h.strip().lower() for h in headers), guard, rewrites)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _keys(entry: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {', '.join(allowed)})")
