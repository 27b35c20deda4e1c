"""slo-headroom-tier-filter: keep the pods predicted to meet the request's SLO.

llm-d's `slo-headroom-tier-filter` (pkg/epp/framework/plugins/scheduling/filter/
sloheadroomtier): pods predicted to meet both targets form the positive tier, the rest the
negative tier. When both tiers exist the positive one is kept, except with probability
`epsilonExploreNeg` (default 0.01, as llm-d) when the negative one is, so that a pod
recovering from overload gets the occasional request that shows it is fast again (its model
only learns from requests it serves). When no pod is predicted to meet the SLO, all pods are
kept (the scorer then picks the least deficit).

A pass-through before the predictor is trained and for requests without SLO.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.latency.runtime import LatencyRuntime, latency_runtime
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class SLOHeadroomTierFilter:
    type_name: ClassVar[str] = "slo-headroom-tier-filter"
    consumes: ClassVar[tuple[str, ...]] = ("latency.predictions",)

    @dataclass(slots=True)
    class Params:
        epsilon_explore_neg: float = 0.01

        def validate(self) -> None:
            if not 0.0 <= self.epsilon_explore_neg <= 1.0:
                raise ValueError(f"parameter 'epsilonExploreNeg' must be within [0, 1], got "
                                 f"{self.epsilon_explore_neg}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.runtime: LatencyRuntime = latency_runtime(ctx.services if ctx is not None else {})
        self.rng = random.Random()

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        cycle = self.runtime.cycle(state, request, endpoints)
        if cycle is None or cycle.slo.empty:
            return endpoints
        meeting = cycle.meeting([ep.key for ep in endpoints])
        if all(meeting) or not any(meeting):
            return endpoints  # all meet the SLO, or none does: all stay
        positive = [ep for ep, meets in zip(endpoints, meeting, strict=True) if meets]
        eps = self.params.epsilon_explore_neg
        if eps > 0.0 and self.rng.random() < eps:
            return [ep for ep, meets in zip(endpoints, meeting, strict=True) if not meets]
        return positive
