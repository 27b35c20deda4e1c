"""weighted-random-picker: random endpoint(s) with probability proportional to the score.

Uses A-Res weighted sampling without replacement (key = U ** (1 / score), take the largest
keys), like GIE. Endpoints with score 0 are only chosen when every score is 0, in which case
the pick is uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.scheduling.plugins._picker_common import PickerBase
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint


@register_plugin
class WeightedRandomPicker(PickerBase):
    type_name: ClassVar[str] = "weighted-random-picker"

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(targets=[])
        k = min(self.params.max_num_of_endpoints, len(scored))
        rand = self.rng.random
        keyed = [
            # 1 - random() is in (0, 1], so the key is never 0 for a positive score.
            ((1.0 - rand()) ** (1.0 / se.score) if se.score > 0.0 else -1.0, i)
            for i, se in enumerate(scored)
        ]
        if all(key < 0.0 for key, _ in keyed):
            chosen = self.rng.sample(range(len(scored)), k)
            return ProfileRunResult(targets=[scored[i].endpoint for i in chosen])
        keyed.sort(reverse=True)
        return ProfileRunResult(targets=[scored[i].endpoint for _, i in keyed[:k]])
