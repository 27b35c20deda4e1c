"""lora-affinity-scorer: prefer endpoints where the requested LoRA adapter is cheapest to serve.

Scores follow GIE: adapter already active 1.0 > endpoint can load one more adapter
(active + waiting < max_loras) 0.8 > adapter already waiting to load 0.6 > otherwise 0.
Requests for a base model are neutral (every endpoint scores 1.0), so the scorer never skews
base-model traffic. A request counts as base-model when its target model is listed in
`baseModels`, or when no scored endpoint reports LoRA support (max_loras == 0), which is what
vLLM reports without --enable-lora.
Reads EndpointMetrics.active_loras / waiting_loras / max_loras (vllm:lora_requests_info).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest

ACTIVE_SCORE = 1.0
CAN_LOAD_SCORE = 0.8
WAITING_SCORE = 0.6


@register_plugin
class LoraAffinityScorer:
    type_name: ClassVar[str] = "lora-affinity-scorer"
    consumes: ClassVar[tuple[str, ...]] = (
        "metrics.active_loras", "metrics.waiting_loras", "metrics.max_loras",
    )

    @dataclass(slots=True)
    class Params:
        base_models: list[str] = field(default_factory=list)

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self._base_models = frozenset(self.params.base_models)

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        model = request.target_model
        if model in self._base_models or all(ep.metrics.max_loras <= 0 for ep in endpoints):
            return [1.0] * len(endpoints)
        scores: list[float] = []
        for ep in endpoints:
            m = ep.metrics
            if model in m.active_loras:
                scores.append(ACTIVE_SCORE)
            elif len(m.active_loras) + len(m.waiting_loras) < m.max_loras:
                scores.append(CAN_LOAD_SCORE)
            elif model in m.waiting_loras:
                scores.append(WAITING_SCORE)
            else:
                scores.append(0.0)
        return scores
