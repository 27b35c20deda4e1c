"""sheddable-eviction-filter: only sheddable requests (priority < 0) may be evicted
(llm-d-router pkg/epp/framework/plugins/flowcontrol/eviction/filtering/sheddable.go; no
parameters). It is also what `enableEviction` uses when no filter is configured and
`evictionVictimMaxPriority` keeps its default -1."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.interfaces import EvictionItem
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class SheddableEvictionFilter(ParameterlessPlugin):
    type_name: ClassVar[str] = "sheddable-eviction-filter"

    def accept(self, item: EvictionItem) -> bool:
        return item.priority < 0
