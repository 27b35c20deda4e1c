"""edf-ordering-policy: earliest deadline first within a flow (GIE v1.5).

The deadline is the enqueue time plus the request's effective TTL; requests without a TTL
sort after every request that has one, first come first served among themselves. For a
per-request deadline from a header, see slo-deadline-ordering-policy (`x-llm-d-slo-ttft-ms`).
"""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import QueueItem
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class EDFOrdering(ParameterlessPlugin):
    type_name: ClassVar[str] = "edf-ordering-policy"

    def sort_key(self, item: QueueItem) -> float:
        return item.deadline
