"""The `flowControl` section of the EndpointPickerConfig (GIE v1.5 apix/config/v1alpha1
FlowControlConfig), validated at load; every error names the file and the field.

    featureGates: [flowControl]          # GIE: the section is only used with this gate
    saturationDetector: {pluginRef: cd}  # top level; default: a utilization-detector
    flowControl:
      maxBytes: 1Gi                      # global limit over all queued requests (0/absent: none)
      maxRequests: 1k
      defaultRequestTTL: 30s             # 0/absent: wait until dispatched or the client leaves
      defaultPriorityBand: {maxRequests: 100}   # template for priorities not listed below
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

Policy refs name plugins of the `plugins:` section; as in GIE, a ref equal to a built-in
policy type name works without listing it. Band defaults follow GIE: maxBytes 1 GB
(1,000,000,000), maxRequests unlimited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.flowcontrol.interfaces import FairnessPolicy, OrderingPolicy, SaturationDetector, UsageLimitPolicy
from epp.flowcontrol.quantity import parse_duration, parse_quantity
from epp.scheduling.registry import ConfigError, PluginContext, parse_params, plugin_class

log = logging.getLogger(__name__)

FEATURE_GATE = "flowControl"
DEFAULT_FAIRNESS = "global-strict-fairness-policy"
DEFAULT_ORDERING = "fcfs-ordering-policy"
DEFAULT_DETECTOR = "utilization-detector"  # GIE's default
DEFAULT_USAGE_LIMIT = "static-usage-limit-policy"  # llm-d-router's default (threshold 1.0)
DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # GIE defaultPriorityBandMaxBytes
_TOP_KEYS = ("maxBytes", "maxRequests", "defaultRequestTTL", "defaultPriorityBand", "priorityBands",
             "usageLimitPolicyPluginRef", "requestTTLByObjective", "enableEviction", "evictionDelay",
             "evictionVictimMaxPriority")
_BAND_KEYS = ("priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")


@dataclass(slots=True)
class BandConfig:
    priority: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    max_bytes: int = DEFAULT_BAND_MAX_BYTES  # 0 = unlimited
    max_requests: int = 0  # 0 = unlimited


@dataclass(slots=True)
class FlowControlConfig:
    enabled: bool
    detector: SaturationDetector
    max_bytes: int = 0  # 0 = unlimited
    max_requests: int = 0
    default_request_ttl: float = 0.0  # seconds; 0 = none
    default_band: BandConfig | None = None
    bands: dict[int, BandConfig] = field(default_factory=dict)
    ttl_by_objective: dict[str, float] = field(default_factory=dict)
    enable_eviction: bool = False
    # Extensions to enableEviction: None = evict only for a request that waited its whole TTL;
    # a number = evict as soon as the head of a blocked band has waited that long (seconds).
    eviction_delay: float | None = None
    eviction_victim_max_priority: int = -1  # -1: sheddable only (llm-d's eviction-sheddable-filter)
    usage_limit: UsageLimitPolicy | None = None  # None: static 1.0

    def band_config(self, priority: int) -> BandConfig:
        cfg = self.bands.get(priority)
        if cfg is None:
            tpl = self.default_band
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
    detector = _detector(sections.get("saturationDetector"), plugins, ctx, source, default_detector)
    gates = sections.get("featureGates") or []
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise ConfigError(f"{source}: field 'featureGates' must be a list of names, got {gates!r}")
    raw = sections.get("flowControl")
    enabled = FEATURE_GATE in gates
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field 'flowControl' must be a mapping, got {type(raw).__name__}")
    if raw and not enabled:
        # GIE loads such a config and ignores the section; do the same, but say so.
        log.warning("%s: field 'flowControl' is ignored: feature gate %r is not enabled "
                    "(add 'featureGates: [%s]')", source, FEATURE_GATE, FEATURE_GATE)
    where = f"{source}: flowControl"
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {', '.join(_TOP_KEYS)})")
    cfg = FlowControlConfig(enabled=enabled, detector=detector)
    cfg.usage_limit = _policy(raw.get("usageLimitPolicyPluginRef"), DEFAULT_USAGE_LIMIT, UsageLimitPolicy,
                              plugins, ctx, f"{where}.usageLimitPolicyPluginRef")
    cfg.max_bytes = _quantity(raw, "maxBytes", where, 0)
    cfg.max_requests = _quantity(raw, "maxRequests", where, 0)
    cfg.default_request_ttl = _duration(raw, "defaultRequestTTL", where, 0.0)
    tpl_raw = raw.get("defaultPriorityBand") or {}
    cfg.default_band = _band(tpl_raw, plugins, ctx, f"{where}.defaultPriorityBand", template=True)
    bands_raw = raw.get("priorityBands") or []
    if not isinstance(bands_raw, list):
        raise ConfigError(f"{where}.priorityBands: must be a list, got {type(bands_raw).__name__}")
    for i, b in enumerate(bands_raw):
        band = _band(b, plugins, ctx, f"{where}.priorityBands[{i}]", template=False)
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
    if not evict and ("evictionDelay" in raw or "evictionVictimMaxPriority" in raw):
        log.warning("%s: evictionDelay / evictionVictimMaxPriority have no effect without "
                    "enableEviction: true", where)
    return cfg


def _detector(raw: Any, plugins: Mapping[str, Any], ctx: PluginContext, source: str,
              default: Callable[[], SaturationDetector] | None) -> SaturationDetector:
    ref = None
    if raw is not None:
        if not isinstance(raw, dict) or set(raw) - {"pluginRef"}:
            raise ConfigError(f"{source}: field 'saturationDetector' must be a mapping with 'pluginRef', "
                              f"got {raw!r}")
        ref = raw.get("pluginRef") or None
    if ref is not None:
        plugin = plugins.get(ref)
        if plugin is None:
            raise ConfigError(f"{source}: saturationDetector.pluginRef: {ref!r} names no plugin "
                              f"(defined: {', '.join(plugins) or 'none'})")
        if not isinstance(plugin, SaturationDetector):
            raise ConfigError(f"{source}: saturationDetector.pluginRef: plugin {ref!r} is not a saturation "
                              "detector (utilization-detector, concurrency-detector)")
        return plugin
    # Without a ref: the one detector configured, else the default utilization detector.
    found = [p for p in plugins.values() if isinstance(p, SaturationDetector)]
    if len(found) > 1:
        raise ConfigError(f"{source}: several saturation detectors configured "
                          f"({', '.join(p.name for p in found)}); choose one with saturationDetector.pluginRef")
    if found:
        return found[0]
    if default is not None:
        return default()
    from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector

    return UtilizationDetector(name=DEFAULT_DETECTOR, ctx=ctx)


def _policy(ref: Any, default: str, proto: Any, plugins: Mapping[str, Any], ctx: PluginContext,
            where: str) -> Any:
    if ref is None or ref == "":
        ref = default
    if not isinstance(ref, str):
        raise ConfigError(f"{where}: must be a plugin name, got {ref!r}")
    plugin = plugins.get(ref)
    if plugin is None:
        cls = plugin_class(ref)
        if cls is None:
            raise ConfigError(f"{where}: {ref!r} names no plugin and no built-in policy type "
                              f"(defined plugins: {', '.join(plugins) or 'none'})")
        plugin = cls(name=ref, params=parse_params(cls.Params, None, where), ctx=ctx)
    if not isinstance(plugin, proto):
        kind = {FairnessPolicy: "a fairness", OrderingPolicy: "an ordering"}.get(proto, "a usage limit")
        raise ConfigError(f"{where}: plugin {ref!r} is not {kind} policy")
    return plugin


def _band(raw: Any, plugins: Mapping[str, Any], ctx: PluginContext, where: str, template: bool) -> BandConfig:
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
                         f"{where}.fairnessPolicyRef"),
        ordering=_policy(raw.get("orderingPolicyRef"), DEFAULT_ORDERING, OrderingPolicy, plugins, ctx,
                         f"{where}.orderingPolicyRef"),
        max_bytes=_quantity(raw, "maxBytes", where, DEFAULT_BAND_MAX_BYTES),
        max_requests=_quantity(raw, "maxRequests", where, 0),
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
