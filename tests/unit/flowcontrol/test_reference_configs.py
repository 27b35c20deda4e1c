"""llm-d-router's own example configs for the flow-control plugins (copied verbatim into
fixtures/ from llm-d/llm-d-router deploy/config/ at commit ebab687) load through our config
loader and build the plugins with upstream's parameters; plus configs in upstream's shape for
the eviction plugins, which upstream registers but wires by type (cmd/epp/runner/runner.go
buildRequestEvictor), so no upstream example lists them."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.loader import load_scheduler_config, parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.flowcontrol.config import FlowControlConfig, build_flow_control_config, may_evict_item
from epp.flowcontrol.interfaces import EvictionItem
from epp.flowcontrol.plugins.priority_then_time_eviction_order import PriorityThenTimeEvictionOrder
from epp.flowcontrol.plugins.program_aware_fairness import ProgramAwareFairness
from epp.flowcontrol.plugins.sheddable_eviction_filter import SheddableEvictionFilter
from epp.flowcontrol.plugins.soft_reflective_ceiling import SoftReflectiveCeiling
from epp.scheduling.registry import ConfigError, PluginContext
from epp.scheduling.types import LLMRequest

FIXTURES = Path(__file__).parent / "fixtures"
HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load_file(name: str) -> tuple[FlowControlConfig, object]:
    ctx = PluginContext(Datastore())
    sched = load_scheduler_config(FIXTURES / name, ctx)
    return build_flow_control_config(sched.extra_sections, sched.plugins, ctx, sched.source), sched


def load(text: str) -> FlowControlConfig:
    ctx = PluginContext(Datastore())
    sched = parse_scheduler_config(HEADER + text, ctx, "fc.yaml")
    return build_flow_control_config(sched.extra_sections, sched.plugins, ctx, sched.source)


def test_upstream_sim_program_aware_config() -> None:
    cfg, sched = load_file("sim-program-aware-config.yaml")
    assert cfg.enabled
    fairness = cfg.band_config(0).fairness
    assert isinstance(fairness, ProgramAwareFairness) and fairness.name == "program-aware-fairness"
    # No parameters in the file: upstream's DefaultConfig().
    p = fairness.params
    assert (p.strategy, p.las_weight_service, p.las_weight_head_wait, p.las_half_life_seconds,
            p.eviction_ttl_seconds, p.eviction_sweep_seconds) == ("las", 0.8, 0.2, 60, 3600, 300)
    # Every band templated from defaultPriorityBand shares the one instance (its books).
    assert cfg.band_config(-1).fairness is fairness and cfg.band_config(7).fairness is fairness
    assert cfg.lifecycle_hooks == [fairness]
    profile = sched.scheduler.profiles["default"]  # type: ignore[attr-defined]
    assert [s.name for s, _ in profile.scorers] == ["queue-scorer"]


def test_upstream_soft_reflective_ceiling_config() -> None:
    cfg, sched = load_file("soft-reflective-ceiling-epp-config.yaml")
    assert cfg.enabled and isinstance(cfg.usage_limit, SoftReflectiveCeiling)
    assert cfg.usage_limit.name == "soft-reflective-ceiling-policy"
    profile = sched.scheduler.profiles["default"]  # type: ignore[attr-defined]
    assert {s.name: w for s, w in profile.scorers} == {
        "queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}


def test_program_aware_parameters_from_the_upstream_readme() -> None:
    cfg = load("""
featureGates: [flowControl]
plugins:
- type: program-aware-fairness
  parameters: {strategy: las, lasWeightService: 0.7, lasWeightHeadWait: 0.3, lasHalfLifeSeconds: 30,
               evictionTtlSeconds: 600, evictionSweepSeconds: 60}
flowControl:
  defaultPriorityBand: {fairnessPolicyRef: program-aware-fairness}
""")
    fairness = cfg.band_config(0).fairness
    assert isinstance(fairness, ProgramAwareFairness)
    p = fairness.params
    assert (p.las_weight_service, p.las_weight_head_wait, p.las_half_life_seconds,
            p.eviction_ttl_seconds, p.eviction_sweep_seconds) == (0.7, 0.3, 30, 600, 60)


@pytest.mark.parametrize("fairness", ["program-aware-fairness", "round-robin-fairness-policy"])
def test_a_listed_fairness_policy_does_not_join_the_implicit_profile_as_a_picker(fairness: str) -> None:
    # A fairness policy's pick(band) looked like a picker to the implicit default profile:
    # "more than one picker (round-robin-fairness-policy, max-score-picker)".
    ctx = PluginContext(Datastore())
    sched = parse_scheduler_config(HEADER + f"""
featureGates: [flowControl]
plugins:
- type: {fairness}
- type: soft-reflective-ceiling-policy
- type: sheddable-eviction-filter
- type: priority-then-time-eviction-order-policy
- type: queue-scorer
- type: max-score-picker
""", ctx, "fc.yaml")
    profile = sched.scheduler.profiles["default"]
    assert profile.picker.name == "max-score-picker"
    assert [s.name for s, _ in profile.scorers] == ["queue-scorer"] and not profile.filters


def test_a_policy_named_by_type_without_listing_is_shared_between_bands() -> None:
    cfg = load("""
featureGates: [flowControl]
flowControl:
  priorityBands:
  - {priority: 1, fairnessPolicyRef: program-aware-fairness}
  - {priority: 0, fairnessPolicyRef: program-aware-fairness}
""")
    assert cfg.bands[1].fairness is cfg.bands[0].fairness
    assert cfg.lifecycle_hooks == [cfg.bands[0].fairness]


def item(priority: int) -> EvictionItem:
    return EvictionItem(LLMRequest(request_id="r", model="m", target_model="m", priority=priority),
                        priority, 0.0, lambda: None)


def test_eviction_plugins_in_upstream_shape_are_the_ones_eviction_uses() -> None:
    cfg = load("""
featureGates: [flowControl]
plugins:
- type: sheddable-eviction-filter
- type: priority-then-time-eviction-order-policy
flowControl:
  enableEviction: true
""")
    assert isinstance(cfg.eviction_filter, SheddableEvictionFilter)
    assert isinstance(cfg.eviction_ordering, PriorityThenTimeEvictionOrder)
    assert [may_evict_item(cfg, item(p)) for p in (-2, -1, 0, 1)] == [True, True, False, False]
    # Without them: evictionVictimMaxPriority (default -1: the same verdicts).
    default = load("featureGates: [flowControl]\nflowControl: {enableEviction: true}\n")
    assert default.eviction_filter is None and default.eviction_ordering is None
    assert [may_evict_item(default, item(p)) for p in (-2, -1, 0, 1)] == [True, True, False, False]


@pytest.mark.parametrize(("text", "message"), [
    ("plugins: [{type: sheddable-eviction-filter}]\n"
     "flowControl: {enableEviction: true, evictionVictimMaxPriority: 0}\n",
     r"fc.yaml: flowControl.evictionVictimMaxPriority: cannot be combined with the eviction filter "
     r"plugin 'sheddable-eviction-filter'"),
    ("plugins: [{type: sheddable-eviction-filter, name: a}, {type: sheddable-eviction-filter, name: b}]\n",
     r"fc.yaml: plugins: several eviction filter policies configured \(a, b\)"),
    ("plugins: [{type: sheddable-eviction-filter, parameters: {maxPriority: 0}}]\n",
     r"fc.yaml: plugin 'sheddable-eviction-filter' \(sheddable-eviction-filter\): unknown parameter 'maxPriority'"),
    ("plugins: [{type: soft-reflective-ceiling-policy, parameters: {threshold: 0.5}}]\n",
     r"fc.yaml: plugin 'soft-reflective-ceiling-policy' \(soft-reflective-ceiling-policy\): "
     r"unknown parameter 'threshold'"),
    ("plugins: [{type: program-aware-fairness, parameters: {evictionSweepSeconds: 0}}]\n",
     r"fc.yaml: plugin 'program-aware-fairness' \(program-aware-fairness\): "
     r"parameter 'evictionSweepSeconds' must be > 0"),
    ("plugins: [{type: queue-scorer}]\nflowControl: {defaultPriorityBand: {fairnessPolicyRef: queue-scorer}}\n",
     r"fairnessPolicyRef: plugin 'queue-scorer' is not a fairness policy"),
])
def test_errors_name_file_plugin_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("featureGates: [flowControl]\n" + text)
