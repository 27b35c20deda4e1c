"""fcfs-ordering-policy: first come, first served within a flow (GIE's default ordering)."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import QueueItem
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class FCFSOrdering(ParameterlessPlugin):
    type_name: ClassVar[str] = "fcfs-ordering-policy"

    def sort_key(self, item: QueueItem) -> float:
        return item.enqueued_at
