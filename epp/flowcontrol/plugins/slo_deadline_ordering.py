"""slo-deadline-ordering-policy: earliest SLO deadline first (GIE v1.5): arrival time plus
the request's TTFT target (`x-llm-d-slo-ttft-ms`, or its deprecated alias `x-slo-ttft-ms`);
requests without a valid one sort last."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import QueueItem
from epp.headers import SLO_TTFT
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class SLODeadlineOrdering(ParameterlessPlugin):
    type_name: ClassVar[str] = "slo-deadline-ordering-policy"

    def sort_key(self, item: QueueItem) -> float:
        raw = item.request.headers.get(SLO_TTFT)
        try:
            ms = float(raw) if raw else -1.0
        except ValueError:
            ms = -1.0
        return item.enqueued_at + ms / 1000.0 if ms > 0 else float("inf")
