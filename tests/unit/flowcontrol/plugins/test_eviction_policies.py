"""sheddable-eviction-filter and priority-then-time-eviction-order-policy against llm-d-router
ebab687 pkg/epp/framework/plugins/flowcontrol/eviction/filtering/sheddable_test.go and
ordering/priority_time_test.go (the same cases)."""

from __future__ import annotations

import pytest

from epp.flowcontrol.interfaces import EvictionFilterPolicy, EvictionItem, EvictionOrderingPolicy
from epp.flowcontrol.plugins.priority_then_time_eviction_order import PriorityThenTimeEvictionOrder
from epp.flowcontrol.plugins.sheddable_eviction_filter import SheddableEvictionFilter
from epp.scheduling.registry import parse_params, plugin_class
from epp.scheduling.types import LLMRequest


def item(priority: int, dispatched: float = 0.0) -> EvictionItem:
    return EvictionItem(LLMRequest(request_id="r", model="m", target_model="m", priority=priority),
                        priority, dispatched, lambda: None)


@pytest.mark.parametrize(("priority", "accepted"), [(-1, True), (-100, True), (0, False), (1, False), (100, False)])
def test_sheddable_filter_accepts_negative_priorities_only(priority: int, accepted: bool) -> None:
    assert SheddableEvictionFilter().accept(item(priority)) is accepted


def test_priority_then_time_order() -> None:
    order = PriorityThenTimeEvictionOrder()
    now = 1000.0
    low_old, low_new = item(-2, now - 1.0), item(-2, now)
    mid, high = item(0, now), item(5, now)
    assert order.less(low_old, mid)  # lower priority evicted first
    assert not order.less(high, mid)  # higher priority not evicted first
    assert order.less(low_new, low_old)  # same priority: the newer dispatch first
    assert not order.less(low_old, low_new)
    assert not order.less(mid, mid)  # same item: no preference


@pytest.mark.parametrize(("type_name", "cls", "proto"), [
    ("sheddable-eviction-filter", SheddableEvictionFilter, EvictionFilterPolicy),
    ("priority-then-time-eviction-order-policy", PriorityThenTimeEvictionOrder, EvictionOrderingPolicy),
])
def test_registered_under_upstream_type_names_with_the_configured_name(type_name: str, cls: type,
                                                                       proto: type) -> None:
    found = plugin_class(type_name)
    assert found is cls
    plugin = found(name="mine", params=parse_params(found.Params, None, "t"))
    assert isinstance(plugin, proto) and plugin.name == "mine"
    assert found(params=parse_params(found.Params, None, "t")).name == type_name  # unnamed: the type
