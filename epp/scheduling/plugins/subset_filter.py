"""subset-filter: keep only the endpoints of Envoy's subset hint (LLMRequest.candidates).

The Scheduler already applies the subset before any plugin runs, so this filter is a no-op
in practice; it exists so GIE-style configs that list a subset filter load unchanged, and to
restrict a profile run outside the Scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class SubsetFilter(ParameterlessPlugin):
    type_name: ClassVar[str] = "subset-filter"

    def filter(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        candidates = request.candidates
        if candidates is None:
            return endpoints
        return [ep for ep in endpoints if ep.hostport in candidates]
