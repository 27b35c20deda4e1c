"""priority-then-time-eviction-order-policy: evict the lowest priority first and, within a
priority, the most recently dispatched request, which has the least KV-cache work to lose
(llm-d-router pkg/epp/framework/plugins/flowcontrol/eviction/ordering/priority_time.go; no
parameters; the order eviction uses when none is configured)."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.interfaces import EvictionItem
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class PriorityThenTimeEvictionOrder(ParameterlessPlugin):
    type_name: ClassVar[str] = "priority-then-time-eviction-order-policy"

    def less(self, a: EvictionItem, b: EvictionItem) -> bool:
        if a.priority != b.priority:
            return a.priority < b.priority
        return a.dispatch_time > b.dispatch_time
