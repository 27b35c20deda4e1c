"""The `flowControl` section of the EndpointPickerConfig (llm-d-router / GIE
apix/config/v1alpha1 FlowControlConfig), validated at load; every error names the file and the
field. Field names, defaults and semantics follow llm-d-router (commit ebab687, 2026-08-22:
apix/config/v1alpha1/endpointpickerconfig_types.go, pkg/epp/flowcontrol/controller/config.go,
pkg/epp/flowcontrol/registry/config.go, pkg/epp/config/loader/flowcontrol.go).

    featureGates: [flowControl]          # the section is only used with this gate ("flowControl=true" too)
    flowControl:
      saturationDetector: {pluginRef: cd}  # default: a utilization-detector (the top-level
                                           # `saturationDetector` is the deprecated spelling; this one wins)
      maxBytes: 1Gi                      # global limit over all queued requests (0/absent: none)
      maxRequests: 1k
      defaultRequestTTL: 30s             # queue-wait budget while the pool has endpoints
                                         # (absent: 60s; explicit 0s: wait until dispatched / client leaves)
      noEndpointRequestTTL: 5m           # the budget while the pool has no (healthy) endpoint
                                         # (absent: follows defaultRequestTTL, else 60s; 0s: no limit)
      defaultPriorityBand: {maxRequests: 100}   # template for priorities not listed below
      defaultNegativePriorityBand: {maxRequests: 10}  # template for unlisted priorities < 0
                                                     # (absent: defaultPriorityBand)
      priorityBands:
      - priority: 10
        maxRequests: 50
        fairnessPolicyRef: round-robin-fairness-policy   # plugin name (default global-strict)
        orderingPolicyRef: edf-ordering-policy           # plugin name (default fcfs)
      # extensions beyond GIE:
      requestTTLByObjective: {batch-sheddable: 5s}
      enableEviction: false             # evict in-flight sheddable requests (llm-d's field)
      evictionDelay: 0s                 # evict as soon as a band is blocked (absent: at the TTL)
      evictionVictimMaxPriority: -1     # victims have at most this priority (default: sheddable)
      forwardPriorityToPods: false      # write vLLM's `priority` body field: -(objective priority)
                                        # (pods need --scheduling-policy priority; see below)

Policy refs name plugins of the `plugins:` section; as in GIE, a ref equal to a built-in
policy type name works without listing it (built once per config, so bands share it). The
eviction filter / ordering plugins (sheddable-eviction-filter,
priority-then-time-eviction-order-policy) are not referenced by any field, as upstream: the one
of each listed in `plugins:` is the one enableEviction uses. Band defaults follow llm-d-router: maxBytes 1 GB
(1,000,000,000), maxRequests 5000; a band limit of 0 counts as unset and gets the default
(band limits are always bounded); a global limit of 0 means none.

The TTL in force depends on the regime, re-evaluated while a request waits (controller.py):
defaultRequestTTL (or requestTTLByObjective) while the pool has endpoints, noEndpointRequestTTL
while it has none; each regime change starts a fresh budget, and the total wait stays bounded by
the longer of the two.

forwardPriorityToPods (extension): every routed request's body gets vLLM's `priority` field set
to the negated InferenceObjective priority (GIE: higher is more important; vLLM: lower is
handled earlier), overwriting whatever the client sent there, so a pod started with
`--scheduling-policy priority` orders its own waiting queue (and its KV-pressure preemption)
by the objective. vLLM answers 400 to a non-zero `priority` without that policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.flowcontrol.interfaces import (
    AdaptiveUsageLimitPolicy,
    EvictionFilterPolicy,
    EvictionItem,
    EvictionOrderingPolicy,
    FairnessPolicy,
    OrderingPolicy,
    RequestLifecycleHooks,
    SaturationDetector,
    UsageLimitPolicy,
)
from epp.flowcontrol.quantity import parse_duration, parse_quantity
from epp.scheduling.registry import ConfigError, PluginContext, parse_params, plugin_class, plugin_of_kind

log = logging.getLogger(__name__)

FEATURE_GATE = "flowControl"
DEFAULT_FAIRNESS = "global-strict-fairness-policy"
DEFAULT_ORDERING = "fcfs-ordering-policy"
DEFAULT_DETECTOR = "utilization-detector"  # GIE's default
DEFAULT_USAGE_LIMIT = "static-usage-limit-policy"  # llm-d-router's default (threshold 1.0)
DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # llm-d-router registry defaultPriorityBandMaxBytes
DEFAULT_BAND_MAX_REQUESTS = 5000  # llm-d-router registry defaultPriorityBandMaxRequests
DEFAULT_REQUEST_TTL = 60.0  # llm-d-router controller defaultRequestTTL (seconds)
DEFAULT_NO_ENDPOINT_REQUEST_TTL = 60.0  # llm-d-router controller defaultNoEndpointRequestTTL
# llm-d-router's FlowControlConfig fields, then ours (extensions).
_TOP_KEYS = ("maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL", "defaultPriorityBand",
             "defaultNegativePriorityBand", "priorityBands", "usageLimitPolicyPluginRef", "saturationDetector",
             "enableEviction",
             "requestTTLByObjective", "evictionDelay", "evictionVictimMaxPriority", "forwardPriorityToPods")
_BAND_KEYS = ("priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")


@dataclass(slots=True)
class BandConfig:
    priority: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    max_bytes: int = DEFAULT_BAND_MAX_BYTES
    max_requests: int = DEFAULT_BAND_MAX_REQUESTS


@dataclass(slots=True)
class FlowControlConfig:
    enabled: bool
    detector: SaturationDetector
    max_bytes: int = 0  # 0 = unlimited
    max_requests: int = 0
    default_request_ttl: float = DEFAULT_REQUEST_TTL  # seconds; 0 = none
    # The budget while the pool has no healthy endpoint (seconds; 0 = none).
    no_endpoint_request_ttl: float = DEFAULT_NO_ENDPOINT_REQUEST_TTL
    default_band: BandConfig | None = None
    default_negative_band: BandConfig | None = None  # None: default_band serves priorities < 0 too
    bands: dict[int, BandConfig] = field(default_factory=dict)
    ttl_by_objective: dict[str, float] = field(default_factory=dict)
    enable_eviction: bool = False
    # Extensions to enableEviction: None = evict only for a request that waited its whole TTL;
    # a number = evict as soon as the head of a blocked band has waited that long (seconds).
    eviction_delay: float | None = None
    eviction_victim_max_priority: int = -1  # -1: sheddable only (llm-d's sheddable-eviction-filter)
    # The eviction filter / ordering plugins configured (llm-d-router's sheddable-eviction-filter
    # and priority-then-time-eviction-order-policy); None: priority <= evictionVictimMaxPriority,
    # and lowest priority then newest first.
    eviction_filter: EvictionFilterPolicy | None = None
    eviction_ordering: EvictionOrderingPolicy | None = None
    usage_limit: UsageLimitPolicy | AdaptiveUsageLimitPolicy | None = None  # None: static 1.0
    # Plugins of this config with request-lifecycle hooks (program-aware-fairness).
    lifecycle_hooks: list[RequestLifecycleHooks] = field(default_factory=list)
    forward_priority_to_pods: bool = False  # set vLLM's body `priority` to -(objective priority)

    def band_config(self, priority: int) -> BandConfig:
        cfg = self.bands.get(priority)
        if cfg is None:
            tpl = self.default_band
            if priority < 0 and self.default_negative_band is not None:
                tpl = self.default_negative_band
            assert tpl is not None
            cfg = BandConfig(priority, tpl.fairness, tpl.ordering, tpl.max_bytes, tpl.max_requests)
            self.bands[priority] = cfg
        return cfg


def build_flow_control_config(
    sections: Mapping[str, Any],
    plugins: Mapping[str, Any],
    ctx: PluginContext,
    source: str,
    default_detector: Callable[[], SaturationDetector] | None = None,
) -> FlowControlConfig:
    """Build the flow-control config from the EndpointPickerConfig's extra sections
    (SchedulerConfig.extra_sections) and its plugin instances."""
    enabled = _gate_enabled(sections.get("featureGates"), source)
    raw = sections.get("flowControl")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field 'flowControl' must be a mapping, got {type(raw).__name__}")
    where = f"{source}: flowControl"
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {', '.join(_TOP_KEYS)})")
    if not enabled and set(raw) - {"saturationDetector"}:
        # llm-d-router loads such a config and ignores the section (all but the saturation
        # detector, which the legacy admission path uses too); do the same, but say so.
        log.warning("%s: field 'flowControl' is ignored: feature gate %r is not enabled "
                    "(add 'featureGates: [%s]')", source, FEATURE_GATE, FEATURE_GATE)
    # flowControl.saturationDetector wins over the deprecated top-level saturationDetector.
    if raw.get("saturationDetector") is not None:
        detector = _detector(raw["saturationDetector"], plugins, ctx, f"{where}.saturationDetector",
                             default_detector)
    else:
        detector = _detector(sections.get("saturationDetector"), plugins, ctx, f"{source}: saturationDetector",
                             default_detector)
    cfg = FlowControlConfig(enabled=enabled, detector=detector)
    # Policies a ref names by type without listing them are built once per type, so bands
    # naming the same one share it (and its state, e.g. program-aware-fairness's books).
    implicit: dict[str, Any] = {}
    cfg.usage_limit = _policy(raw.get("usageLimitPolicyPluginRef"), DEFAULT_USAGE_LIMIT,
                              (UsageLimitPolicy, AdaptiveUsageLimitPolicy), plugins, ctx,
                              f"{where}.usageLimitPolicyPluginRef", implicit)
    cfg.max_bytes = _quantity(raw, "maxBytes", where, 0)
    cfg.max_requests = _quantity(raw, "maxRequests", where, 0)
    cfg.default_request_ttl = _duration(raw, "defaultRequestTTL", where, DEFAULT_REQUEST_TTL)
    # Absent, the no-endpoint budget follows defaultRequestTTL (llm-d-router NewConfigFromAPI):
    # splitting the two regimes is opt-in.
    cfg.no_endpoint_request_ttl = _duration(
        raw, "noEndpointRequestTTL", where,
        cfg.default_request_ttl if raw.get("defaultRequestTTL") is not None else DEFAULT_NO_ENDPOINT_REQUEST_TTL)
    tpl_raw = raw.get("defaultPriorityBand") or {}
    cfg.default_band = _band(tpl_raw, plugins, ctx, f"{where}.defaultPriorityBand", True, implicit)
    if raw.get("defaultNegativePriorityBand") is not None:
        cfg.default_negative_band = _band(raw["defaultNegativePriorityBand"], plugins, ctx,
                                          f"{where}.defaultNegativePriorityBand", True, implicit)
    bands_raw = raw.get("priorityBands") or []
    if not isinstance(bands_raw, list):
        raise ConfigError(f"{where}.priorityBands: must be a list, got {type(bands_raw).__name__}")
    for i, b in enumerate(bands_raw):
        band = _band(b, plugins, ctx, f"{where}.priorityBands[{i}]", False, implicit)
        if band.priority in cfg.bands:
            raise ConfigError(f"{where}.priorityBands[{i}].priority: priority {band.priority} configured twice")
        cfg.bands[band.priority] = band
    ttls = raw.get("requestTTLByObjective") or {}
    if not isinstance(ttls, dict):
        raise ConfigError(f"{where}.requestTTLByObjective: must be a mapping of objective name to duration")
    for name in ttls:
        cfg.ttl_by_objective[str(name)] = _duration(ttls, name, f"{where}.requestTTLByObjective", 0.0)
    evict = raw.get("enableEviction", False)
    if not isinstance(evict, bool):
        raise ConfigError(f"{where}.enableEviction: must be true or false, got {evict!r}")
    cfg.enable_eviction = evict
    if raw.get("evictionDelay") is not None:
        cfg.eviction_delay = _duration(raw, "evictionDelay", where, 0.0)
    victim_max = raw.get("evictionVictimMaxPriority", -1)
    if isinstance(victim_max, bool) or not isinstance(victim_max, int):
        raise ConfigError(f"{where}.evictionVictimMaxPriority: must be an integer, got {victim_max!r}")
    cfg.eviction_victim_max_priority = victim_max
    forward = raw.get("forwardPriorityToPods", False)
    if not isinstance(forward, bool):
        raise ConfigError(f"{where}.forwardPriorityToPods: must be true or false, got {forward!r}")
    cfg.forward_priority_to_pods = forward
    _eviction_plugins(cfg, raw, plugins, source)
    if not evict and ("evictionDelay" in raw or "evictionVictimMaxPriority" in raw):
        log.warning("%s: evictionDelay / evictionVictimMaxPriority have no effect without "
                    "enableEviction: true", where)
    hooks: dict[int, RequestLifecycleHooks] = {}
    for p in (*plugins.values(), *implicit.values()):
        if isinstance(p, RequestLifecycleHooks):
            hooks.setdefault(id(p), p)
    cfg.lifecycle_hooks = list(hooks.values())
    return cfg


def _eviction_plugins(cfg: FlowControlConfig, raw: Mapping[str, Any], plugins: Mapping[str, Any],
                      source: str) -> None:
    """llm-d-router registers its eviction filter and ordering as plugins, but no field refers
    to them: its evictor is always built with sheddable-eviction-filter and
    priority-then-time-eviction-order-policy. Here the one filter / ordering plugin listed in
    `plugins:` is the one eviction uses (a config in upstream's shape, listing those two,
    behaves as upstream); none listed: evictionVictimMaxPriority, and the same order."""
    for proto, kind, attr in ((EvictionFilterPolicy, "filter", "eviction_filter"),
                              (EvictionOrderingPolicy, "ordering", "eviction_ordering")):
        found = [p for p in plugins.values() if isinstance(p, proto)]
        if len(found) > 1:
            raise ConfigError(f"{source}: plugins: several eviction {kind} policies configured "
                              f"({', '.join(p.name for p in found)}); list at most one")
        if found:
            setattr(cfg, attr, found[0])
    if cfg.eviction_filter is not None and "evictionVictimMaxPriority" in raw:
        raise ConfigError(f"{source}: flowControl.evictionVictimMaxPriority: cannot be combined with the "
                          f"eviction filter plugin {cfg.eviction_filter.name!r}; use one or the other")
    if not cfg.enable_eviction and (cfg.eviction_filter is not None or cfg.eviction_ordering is not None):
        log.info("%s: eviction filter / ordering plugins are configured but flowControl.enableEviction "
                 "is off: they have no effect", source)


def may_evict_item(cfg: FlowControlConfig, item: EvictionItem) -> bool:
    """Whether eviction may end `item`: the configured filter's verdict, else its priority is at
    most evictionVictimMaxPriority."""
    if cfg.eviction_filter is not None:
        return cfg.eviction_filter.accept(item)
    return item.priority <= cfg.eviction_victim_max_priority


def _gate_enabled(gates: Any, source: str) -> bool:
    """featureGates entries are "name", "name=true" or "name=false" (llm-d-router
    loadFeatureConfig: the value parsed as Go's strconv.ParseBool of its lower-cased text);
    the flowControl gate is off by default."""
    if gates is None:
        return False
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise ConfigError(f"{source}: field 'featureGates' must be a list of names, got {gates!r}")
    enabled = False
    for i, gate in enumerate(gates):
        name, sep, value = gate.partition("=")
        if name != FEATURE_GATE:
            continue
        if not sep:
            enabled = True
            continue
        text = value.strip().lower()
        if text in ("1", "t", "true"):
            enabled = True
        elif text in ("0", "f", "false"):
            enabled = False
        else:
            raise ConfigError(f"{source}: featureGates[{i}]: {gate!r}: the value after '=' must be "
                              "true or false")
    return enabled


def _detector(raw: Any, plugins: Mapping[str, Any], ctx: PluginContext, where: str,
              default: Callable[[], SaturationDetector] | None) -> SaturationDetector:
    ref = None
    if raw is not None:
        if not isinstance(raw, dict) or set(raw) - {"pluginRef"}:
            raise ConfigError(f"{where}: must be a mapping with 'pluginRef', got {raw!r}")
        ref = raw.get("pluginRef") or None
    if ref is not None:
        try:
            detector: SaturationDetector = plugin_of_kind(
                plugins, ref, SaturationDetector, "a saturation detector (utilization-detector, concurrency-detector)")
        except ValueError as e:
            raise ConfigError(f"{where}.pluginRef: {e}") from None
        return detector
    # Without a ref: the one detector configured, else the default utilization detector.
    found = [p for p in plugins.values() if isinstance(p, SaturationDetector)]
    if len(found) > 1:
        raise ConfigError(f"{where}: several saturation detectors configured "
                          f"({', '.join(p.name for p in found)}); choose one with "
                          "flowControl.saturationDetector.pluginRef")
    if found:
        return found[0]
    if default is not None:
        return default()
    from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector

    return UtilizationDetector(name=DEFAULT_DETECTOR, ctx=ctx)


def _policy(ref: Any, default: str, proto: Any, plugins: Mapping[str, Any], ctx: PluginContext,
            where: str, implicit: dict[str, Any]) -> Any:
    if ref is None or ref == "":
        ref = default
    if not isinstance(ref, str):
        raise ConfigError(f"{where}: must be a plugin name, got {ref!r}")
    plugin = plugins.get(ref, implicit.get(ref))
    if plugin is None:
        cls = plugin_class(ref)
        if cls is None:
            raise ConfigError(f"{where}: {ref!r} names no plugin and no built-in policy type "
                              f"(defined plugins: {', '.join(plugins) or 'none'})")
        plugin = implicit[ref] = cls(name=ref, params=parse_params(cls.Params, None, where), ctx=ctx)
    if not isinstance(plugin, proto):
        kind = ("a fairness" if proto is FairnessPolicy
                else "an ordering" if proto is OrderingPolicy else "a usage limit")
        raise ConfigError(f"{where}: plugin {ref!r} is not {kind} policy")
    return plugin


def _band(raw: Any, plugins: Mapping[str, Any], ctx: PluginContext, where: str, template: bool,
          implicit: dict[str, Any]) -> BandConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {raw!r}")
    for key in raw:
        if key not in _BAND_KEYS:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {', '.join(_BAND_KEYS)})")
    priority = raw.get("priority", 0)
    if not template and "priority" not in raw:
        raise ConfigError(f"{where}.priority: required")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"{where}.priority: must be an integer, got {priority!r}")
    return BandConfig(
        priority=priority,
        fairness=_policy(raw.get("fairnessPolicyRef"), DEFAULT_FAIRNESS, FairnessPolicy, plugins, ctx,
                         f"{where}.fairnessPolicyRef", implicit),
        ordering=_policy(raw.get("orderingPolicyRef"), DEFAULT_ORDERING, OrderingPolicy, plugins, ctx,
                         f"{where}.orderingPolicyRef", implicit),
        # 0 counts as unset (llm-d-router: band limits are always bounded).
        max_bytes=_quantity(raw, "maxBytes", where, DEFAULT_BAND_MAX_BYTES) or DEFAULT_BAND_MAX_BYTES,
        max_requests=_quantity(raw, "maxRequests", where, DEFAULT_BAND_MAX_REQUESTS) or DEFAULT_BAND_MAX_REQUESTS,
    )


def _quantity(raw: Mapping[str, Any], key: str, where: str, default: int) -> int:
    if raw.get(key) is None:
        return default
    try:
        return parse_quantity(raw[key])
    except ValueError as e:
        raise ConfigError(f"{where}.{key}: {e}") from None


def _duration(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    if raw.get(key) is None:
        return default
    try:
        return parse_duration(raw[key])
    except ValueError as e:
        raise ConfigError(f"{where}.{key}: {e}") from None
