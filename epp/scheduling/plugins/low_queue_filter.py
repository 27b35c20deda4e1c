"""low-queue-filter: keep endpoints whose waiting queue is at most `threshold` (GIE).

With GIE semantics, an empty result means no endpoint in the profile can take the request
(the profile yields nothing and the request gets a 503), which sheds load when every pod is
saturated. Set `fallbackToAll: true` to keep all endpoints instead when none is below the
threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class LowQueueFilter:
    type_name: ClassVar[str] = "low-queue-filter"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.waiting_queue_size",)

    @dataclass(slots=True)
    class Params:
        threshold: int = 128
        fallback_to_all: bool = False

        def validate(self) -> None:
            if self.threshold < 0:
                raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()

    def filter(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        threshold = self.params.threshold
        kept = [ep for ep in endpoints if ep.metrics.waiting_queue_size <= threshold]
        if not kept and self.params.fallback_to_all:
            return endpoints
        return kept
