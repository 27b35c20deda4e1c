"""random-picker: uniformly random endpoint(s), ignoring scores (a baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.scheduling.plugins._picker_common import PickerBase
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint


@register_plugin
class RandomPicker(PickerBase):
    type_name: ClassVar[str] = "random-picker"

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        k = min(self.params.max_num_of_endpoints, len(scored))
        if k == 1:
            return ProfileRunResult(targets=[scored[self.rng.randrange(len(scored))].endpoint])
        return ProfileRunResult(targets=[se.endpoint for se in self.rng.sample(list(scored), k)])
