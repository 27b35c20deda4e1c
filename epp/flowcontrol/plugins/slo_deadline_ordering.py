"""slo-deadline-ordering-policy: earliest SLO deadline first (GIE v1.5): arrival time plus
the `x-slo-ttft-ms` request header; requests without a valid header sort last."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import QueueItem
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin

SLO_TTFT_HEADER = "x-slo-ttft-ms"


@register_plugin
class SLODeadlineOrdering(ParameterlessPlugin):
    type_name: ClassVar[str] = "slo-deadline-ordering-policy"

    def sort_key(self, item: QueueItem) -> float:
        raw = item.request.headers.get(SLO_TTFT_HEADER)
        try:
            ms = float(raw) if raw else -1.0
        except ValueError:
            ms = -1.0
        return item.enqueued_at + ms / 1000.0 if ms > 0 else float("inf")
