"""The flowControl / saturationDetector sections of the EndpointPickerConfig (GIE v1.5 field
names), loaded through the real config loader; errors name the file and the field."""

from __future__ import annotations

import pytest

from epp.config.loader import parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.flowcontrol.config import FlowControlConfig, build_flow_control_config
from epp.flowcontrol.plugins.concurrency_detector import ConcurrencyDetector
from epp.flowcontrol.plugins.edf_ordering import EDFOrdering
from epp.flowcontrol.plugins.fcfs_ordering import FCFSOrdering
from epp.flowcontrol.plugins.global_strict_fairness import GlobalStrictFairness
from epp.flowcontrol.plugins.round_robin_fairness import RoundRobinFairness
from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector
from epp.scheduling.registry import ConfigError, PluginContext

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load(text: str) -> FlowControlConfig:
    ctx = PluginContext(Datastore())
    cfg = parse_scheduler_config(HEADER + text, ctx, "fc.yaml")
    return build_flow_control_config(cfg.extra_sections, cfg.plugins, ctx, cfg.source)


FULL = """
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  name: cd
  parameters: {maxConcurrency: 8}
- {type: round-robin-fairness-policy, name: rr}
- type: queue-scorer
saturationDetector: {pluginRef: cd}
flowControl:
  maxBytes: 1Gi
  maxRequests: 1k
  defaultRequestTTL: 1m30s
  defaultPriorityBand: {maxRequests: 100, fairnessPolicyRef: rr}
  priorityBands:
  - {priority: 10, maxBytes: 500M, maxRequests: 50, orderingPolicyRef: edf-ordering-policy}
  - {priority: -1}
  requestTTLByObjective: {batch: 5s}
"""


def test_full_section_is_read_with_gie_defaults() -> None:
    cfg = load(FULL)
    assert cfg.enabled
    assert isinstance(cfg.detector, ConcurrencyDetector) and cfg.detector.params.max_concurrency == 8
    assert (cfg.max_bytes, cfg.max_requests, cfg.default_request_ttl) == (2**30, 1000, 90.0)
    hi = cfg.bands[10]
    assert (hi.max_bytes, hi.max_requests) == (500_000_000, 50)
    assert isinstance(hi.ordering, EDFOrdering) and isinstance(hi.fairness, GlobalStrictFairness)
    low = cfg.bands[-1]  # listed without limits: llm-d-router's band defaults
    # llm-d-router ebab687 pkg/epp/flowcontrol/registry/config.go: defaultPriorityBandMaxBytes
    # 1_000_000_000, defaultPriorityBandMaxRequests 5000 (literals here, not our constants).
    assert (low.max_bytes, low.max_requests) == (1_000_000_000, 5000)
    other = cfg.band_config(3)  # not listed: from the defaultPriorityBand template
    assert other.max_requests == 100 and isinstance(other.fairness, RoundRobinFairness)
    assert isinstance(other.ordering, FCFSOrdering)
    assert cfg.ttl_by_objective == {"batch": 5.0}


def test_without_gate_or_section_flow_control_is_off_with_default_detector() -> None:
    cfg = load("plugins:\n- type: queue-scorer\n")
    assert not cfg.enabled and isinstance(cfg.detector, UtilizationDetector)
    # GIE ignores the section without the feature gate; so do we (with a warning).
    assert not load("flowControl: {maxRequests: 5}\n").enabled


def test_detector_plugin_is_not_added_to_the_implicit_profile() -> None:
    ctx = PluginContext(Datastore())
    cfg = parse_scheduler_config(HEADER + "plugins:\n- type: utilization-detector\n- type: queue-scorer\n",
                                 ctx, "fc.yaml")
    profile = cfg.scheduler.profiles["default"]
    assert [s.name for s, _ in profile.scorers] == ["queue-scorer"]
    assert not profile.filters


@pytest.mark.parametrize(("text", "message"), [
    ("featureGates: [flowControl]\nflowControl: {maxBytes: lots}\n", r"fc.yaml: flowControl.maxBytes: must be"),
    ("featureGates: [flowControl]\nflowControl: {defaultRequestTTL: soon}\n",
     r"fc.yaml: flowControl.defaultRequestTTL: must be a duration"),
    ("featureGates: [flowControl]\nflowControl: {priorityBands: [{maxRequests: 1}]}\n",
     r"fc.yaml: flowControl.priorityBands\[0\].priority: required"),
    ("featureGates: [flowControl]\nflowControl: {priorityBands: [{priority: 1}, {priority: 1}]}\n",
     r"flowControl.priorityBands\[1\].priority: priority 1 configured twice"),
    ("featureGates: [flowControl]\nflowControl: {priorityBands: [{priority: 1, fairnessPolicyRef: nope}]}\n",
     r"flowControl.priorityBands\[0\].fairnessPolicyRef: 'nope' names no plugin"),
    ("featureGates: [flowControl]\nplugins: [{type: queue-scorer}]\n"
     "flowControl: {defaultPriorityBand: {orderingPolicyRef: queue-scorer}}\n",
     r"flowControl.defaultPriorityBand.orderingPolicyRef: plugin 'queue-scorer' is not an ordering policy"),
    ("featureGates: [flowControl]\nflowControl: {maxRequest: 3}\n", r"flowControl: unknown field 'maxRequest'"),
    ("saturationDetector: {pluginRef: missing}\n", r"saturationDetector.pluginRef: 'missing' names no plugin"),
    ("plugins: [{type: utilization-detector}, {type: concurrency-detector}]\n",
     r"several saturation detectors configured"),
    ("featureGates: [flowControl]\nflowControl: {usageLimitPolicyPluginRef: priority-holdback-policy}\n",
     r"flowControl.usageLimitPolicyPluginRef: parameter 'minCeiling' is required"),
    ("featureGates: [flowControl]\nplugins: [{type: queue-scorer}]\n"
     "flowControl: {usageLimitPolicyPluginRef: queue-scorer}\n",
     r"flowControl.usageLimitPolicyPluginRef: plugin 'queue-scorer' is not a usage limit policy"),
    ("featureGates: [flowControl]\nflowControl: {enableEviction: true, evictionVictimMaxPriority: low}\n",
     r"flowControl.evictionVictimMaxPriority: must be an integer"),
    ("featureGates: [flowControl]\nflowControl: {enableEviction: true, evictionDelay: now}\n",
     r"flowControl.evictionDelay: must be a duration"),
    ("featureGates: [flowControl]\nflowControl: {forwardPriorityToPods: 'yes'}\n",
     r"flowControl.forwardPriorityToPods: must be true or false, got 'yes'"),
    ("featureGates: [flowControl]\nflowControl: {forwardPriorityToPod: true}\n",
     r"flowControl: unknown field 'forwardPriorityToPod'"),
])
def test_errors_name_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(text)


def test_usage_limit_policy_and_eviction_extensions() -> None:
    cfg = load("""
featureGates: [flowControl]
plugins:
- {type: priority-holdback-policy, name: hold, parameters: {minCeiling: 0.5}}
- type: queue-scorer
flowControl:
  usageLimitPolicyPluginRef: hold
  enableEviction: true
  evictionDelay: 20ms
  evictionVictimMaxPriority: 0
""")
    assert cfg.usage_limit is not None and cfg.usage_limit.ceilings([1, 0, -1]) == [1.0, 0.75, 0.5]
    assert (cfg.enable_eviction, cfg.eviction_delay, cfg.eviction_victim_max_priority) == (True, 0.02, 0)
    default = load("featureGates: [flowControl]\n")  # llm-d's default: static, threshold 1.0
    assert default.usage_limit is not None and default.usage_limit.ceilings([0]) == [1.0]
    assert (default.eviction_delay, default.eviction_victim_max_priority) == (None, -1)


def test_forward_priority_to_pods_is_off_by_default() -> None:
    assert load("featureGates: [flowControl]\n").forward_priority_to_pods is False
    assert load("featureGates: [flowControl]\nflowControl: {forwardPriorityToPods: true}\n").forward_priority_to_pods


def test_a_detector_referenced_in_a_profile_filters_there() -> None:
    # GIE: saturation detectors are filters; listed in a profile they drop full endpoints.
    ctx = PluginContext(Datastore())
    cfg = parse_scheduler_config(HEADER + """
plugins:
- {type: concurrency-detector, parameters: {maxConcurrency: 4}}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: concurrency-detector}, {pluginRef: queue-scorer}]
""", ctx, "fc.yaml")
    profile = cfg.scheduler.profiles["default"]
    assert [f.name for f in profile.filters] == ["concurrency-detector"]


# --- llm-d-router interoperability. Expected values come from llm-d-router commit ebab687
# (2026-08-22): apix/config/v1alpha1/endpointpickerconfig_types.go (field docs),
# pkg/epp/flowcontrol/controller/config.go (defaultRequestTTL = defaultNoEndpointRequestTTL =
# 60s; NewConfigFromAPI: an unset noEndpointRequestTTL follows defaultRequestTTL),
# pkg/epp/flowcontrol/registry/config.go (band defaults 1e9 bytes / 5000 requests, 0 = unset),
# pkg/epp/config/loader/configloader.go (loadFeatureConfig "name=bool") and the loader's test
# configs in pkg/epp/config/loader/testdata_test.go. Written as literals, not our constants.

UPSTREAM_FLOW_CONTROL = """
plugins:
- name: maxScore
  type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: maxScore
featureGates:
- flowControl
flowControl:
  maxBytes: "1024"
  defaultRequestTTL: 1m
  noEndpointRequestTTL: 5m
"""


def test_upstream_flow_control_config_loads_with_upstream_values() -> None:
    cfg = load(UPSTREAM_FLOW_CONTROL)  # successFlowControlConfigText
    assert cfg.enabled and cfg.max_bytes == 1024
    assert (cfg.default_request_ttl, cfg.no_endpoint_request_ttl) == (60.0, 300.0)


def test_no_endpoint_ttl_follows_default_request_ttl_and_both_default_to_60s() -> None:
    inherited = load("featureGates: [flowControl]\nflowControl: {defaultRequestTTL: 0s}\n")
    assert (inherited.default_request_ttl, inherited.no_endpoint_request_ttl) == (0.0, 0.0)
    inherited = load("featureGates: [flowControl]\nflowControl: {defaultRequestTTL: 7s}\n")
    assert (inherited.default_request_ttl, inherited.no_endpoint_request_ttl) == (7.0, 7.0)
    unset = load("featureGates: [flowControl]\n")
    assert (unset.default_request_ttl, unset.no_endpoint_request_ttl) == (60.0, 60.0)
    split = load("featureGates: [flowControl]\nflowControl: {noEndpointRequestTTL: 0s}\n")
    assert (split.default_request_ttl, split.no_endpoint_request_ttl) == (60.0, 0.0)


def test_default_negative_priority_band_templates_unlisted_negative_priorities() -> None:
    cfg = load("""
featureGates: [flowControl]
plugins: [{type: round-robin-fairness-policy, name: rr}]
flowControl:
  defaultPriorityBand: {maxRequests: 100}
  defaultNegativePriorityBand: {maxRequests: 3, maxBytes: 1k, fairnessPolicyRef: rr}
  priorityBands: [{priority: -5, maxRequests: 7}]
""")
    neg = cfg.band_config(-1)
    assert (neg.max_requests, neg.max_bytes) == (3, 1000) and isinstance(neg.fairness, RoundRobinFairness)
    assert isinstance(neg.ordering, FCFSOrdering)  # unset policy refs: the system defaults
    assert cfg.band_config(-5).max_requests == 7  # a listed band wins over the template
    assert cfg.band_config(0).max_requests == 100  # 0 is not negative: defaultPriorityBand
    assert cfg.band_config(2).max_requests == 100
    # Absent, negative priorities fall back to defaultPriorityBand.
    plain = load("featureGates: [flowControl]\nflowControl: {defaultPriorityBand: {maxRequests: 9}}\n")
    assert plain.band_config(-1).max_requests == 9
    # A band limit of 0 is unset and gets the system default (band limits are always bounded).
    zero = load("featureGates: [flowControl]\nflowControl: {defaultNegativePriorityBand: {maxRequests: 0}}\n")
    assert (zero.band_config(-1).max_requests, zero.band_config(-1).max_bytes) == (5000, 1_000_000_000)


def test_saturation_detector_under_flow_control_wins_over_the_deprecated_top_level_one() -> None:
    text = """
featureGates: [flowControl]
plugins:
- {type: concurrency-detector, name: cd, parameters: {maxConcurrency: 3}}
- {type: utilization-detector, name: ud}
saturationDetector: {pluginRef: ud}
flowControl:
  saturationDetector: {pluginRef: cd}
"""
    assert isinstance(load(text).detector, ConcurrencyDetector)
    # Without the gate the nested detector still serves the legacy admission path.
    assert isinstance(load(text.replace("featureGates: [flowControl]\n", "")).detector, ConcurrencyDetector)


@pytest.mark.parametrize(("gates", "enabled"), [
    ("[flowControl]", True), ('["flowControl=true"]', True), ('["flowControl=false"]', False),
    ('["flowControl=TRUE"]', True), ('["flowControl=0"]', False), ("[otherGate]", False),
    ('["flowControl", "flowControl=false"]', False),  # the last entry wins
])
def test_feature_gate_values(gates: str, enabled: bool) -> None:
    assert load(f"featureGates: {gates}\nflowControl: {{maxRequests: 5}}\n").enabled is enabled


@pytest.mark.parametrize(("text", "message"), [
    ("featureGates: [flowControl]\nflowControl: {noEndpointRequestTTL: later}\n",
     r"fc.yaml: flowControl.noEndpointRequestTTL: must be a duration"),
    ("featureGates: [flowControl]\nflowControl: {noEndpointRequestTTL: -1}\n",
     r"fc.yaml: flowControl.noEndpointRequestTTL: must be >= 0"),
    ("featureGates: [flowControl]\nflowControl: {defaultNegativePriorityBand: {maxBytes: -5}}\n",
     r"fc.yaml: flowControl.defaultNegativePriorityBand.maxBytes: must be >= 0"),
    ("featureGates: [flowControl]\nflowControl: {defaultNegativePriorityBand: {maxRequest: 5}}\n",
     r"fc.yaml: flowControl.defaultNegativePriorityBand: unknown field 'maxRequest'"),
    ("featureGates: [flowControl]\nflowControl: {defaultNegativePriorityBand: {orderingPolicyRef: nope}}\n",
     r"flowControl.defaultNegativePriorityBand.orderingPolicyRef: 'nope' names no plugin"),
    ("featureGates: [flowControl]\nflowControl: {saturationDetector: {pluginRef: missing}}\n",
     r"fc.yaml: flowControl.saturationDetector.pluginRef: 'missing' names no plugin"),
    ("featureGates: [flowControl]\nflowControl: {saturationDetector: cd}\n",
     r"fc.yaml: flowControl.saturationDetector: must be a mapping with 'pluginRef'"),
    ("featureGates: [flowControl]\nplugins: [{type: queue-scorer}]\n"
     "flowControl: {saturationDetector: {pluginRef: queue-scorer}}\n",
     r"flowControl.saturationDetector.pluginRef: plugin 'queue-scorer' is not a saturation detector"),
    ('featureGates: ["flowControl=maybe"]\n', r"fc.yaml: featureGates\[0\]: 'flowControl=maybe'"),
])
def test_llm_d_field_errors_name_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(text)
