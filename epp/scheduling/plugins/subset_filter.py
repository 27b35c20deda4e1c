"""subset-filter: keep only the endpoints of Envoy's subset hint (LLMRequest.candidates).

The Scheduler already applies the subset before any plugin runs, so this filter is a no-op
in practice; it exists so GIE-style configs that list a subset filter load unchanged, and to
restrict a profile run outside the Scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class SubsetFilter:
    type_name: ClassVar[str] = "subset-filter"

    @dataclass(slots=True)
    class Params:
        pass

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name

    def filter(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        candidates = request.candidates
        if candidates is None:
            return endpoints
        return [ep for ep in endpoints if ep.hostport in candidates]
