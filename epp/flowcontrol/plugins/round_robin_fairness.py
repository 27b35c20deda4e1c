"""round-robin-fairness-policy: flows of a band take turns, one request each (GIE v1.5), so
a tenant sending 4x the rate of another does not get 4x the share while both wait."""

from __future__ import annotations

from typing import ClassVar

from epp.flowcontrol.queue import Band, Flow
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin


@register_plugin
class RoundRobinFairness(ParameterlessPlugin):
    type_name: ClassVar[str] = "round-robin-fairness-policy"

    def pick(self, band: Band) -> Flow | None:
        # Band.flows is kept in turn order: the controller moves a served flow to the end.
        for flow in band.flows.values():
            if flow.head() is not None:
                return flow
        return None
