"""max-score-picker: the endpoint(s) with the highest weighted score, ties broken randomly.

Returns the top `maxNumOfEndpoints` endpoints (default 1, as GIE), best first. Fallbacks for
Envoy are the server's job: it can order the remaining endpoints by
ProfileRunResult.scores, so the picker does not pay for a full sort on every decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import ClassVar

from epp.scheduling.plugins._picker_common import PickerBase
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint

_by_score = attrgetter("score")


@register_plugin
class MaxScorePicker(PickerBase):
    type_name: ClassVar[str] = "max-score-picker"

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(targets=[])
        if self.params.max_num_of_endpoints == 1:
            # Single pass; among equal best scores each wins with probability 1/ties
            # (reservoir sampling), so no shuffle or sort on the hot path.
            best = scored[0]
            best_score = best.score
            ties = 1
            rand = self.rng.random
            for candidate in scored[1:] if len(scored) > 1 else ():
                s = candidate.score
                if s > best_score:
                    best, best_score, ties = candidate, s, 1
                elif s == best_score:
                    ties += 1
                    if rand() * ties < 1.0:
                        best = candidate
            return ProfileRunResult(targets=[best.endpoint])
        ordered = list(scored)
        self.rng.shuffle(ordered)  # random tie-break: the sort below is stable
        ordered.sort(key=_by_score, reverse=True)
        return ProfileRunResult(
            targets=[se.endpoint for se in ordered[: self.params.max_num_of_endpoints]]
        )
