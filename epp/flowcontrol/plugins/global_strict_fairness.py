"""global-strict-fairness-policy: serve the flow holding the band's single best request by
the band's ordering policy (GIE's default: no fairness between flows, strict order)."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import Band, Flow
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class GlobalStrictFairness(ParameterlessPlugin):
    type_name: ClassVar[str] = "global-strict-fairness-policy"

    def pick(self, band: Band) -> Flow | None:
        best: Flow | None = None
        best_key: tuple[float, int] | None = None
        for flow in band.flows.values():
            head = flow.head()
            if head is None:
                continue
            key = (head.sort_key, head.seq)
            if best_key is None or key < best_key:
                best, best_key = flow, key
        return best
