"""random-picker: uniformly random endpoint(s), ignoring scores (a baseline)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint


@register_plugin
class RandomPicker:
    type_name: ClassVar[str] = "random-picker"

    @dataclass(slots=True)
    class Params:
        max_num_of_endpoints: int = 1

        def validate(self) -> None:
            if self.max_num_of_endpoints < 1:
                raise ValueError(
                    f"parameter 'maxNumOfEndpoints' must be >= 1, got {self.max_num_of_endpoints}"
                )

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None, rng: random.Random | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.rng = rng if rng is not None else random.Random()

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        k = min(self.params.max_num_of_endpoints, len(scored))
        if k == 1:
            return ProfileRunResult(targets=[scored[self.rng.randrange(len(scored))].endpoint])
        return ProfileRunResult(targets=[se.endpoint for se in self.rng.sample(list(scored), k)])
