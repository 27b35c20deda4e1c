"""max-score-picker: the endpoint(s) with the highest weighted score, ties broken randomly.

Returns the top `maxNumOfEndpoints` endpoints (default 1, as GIE), best first. Fallbacks for
Envoy are the server's job: it can order the remaining endpoints by
ProfileRunResult.scores, so the picker does not pay for a full sort on every decision.

The profile hands it the endpoints and their totals as two lists (`pick_scores`, the
ScoresPicker fast path); `pick` takes ScoredEndpoints as every picker does and chooses the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._picker_common import PickerBase
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint

_by_score = attrgetter("score")
_endpoint = attrgetter("endpoint")


@register_plugin
class MaxScorePicker(PickerBase):
    type_name: ClassVar[str] = "max-score-picker"

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        return self.pick_scores(state, request, list(map(_endpoint, scored)), list(map(_by_score, scored)))

    def pick_scores(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint], scores: Sequence[float],
    ) -> ProfileRunResult:
        if not scores:
            return ProfileRunResult(targets=[])
        if self.params.max_num_of_endpoints == 1:
            # max() and count() run in C; only a tie needs a random draw, and each tied
            # endpoint then wins with probability 1/ties.
            best = max(scores)
            if best != best:
                # NaN first (only when driven directly: the profile clamps NaN): nothing
                # compares greater, so the first endpoint, as a scan would pick.
                return ProfileRunResult(targets=[endpoints[0]])
            ties = scores.count(best)
            if ties == 1:
                index = scores.index(best)
            else:
                tied = [i for i, s in enumerate(scores) if s == best]
                index = tied[min(int(self.rng.random() * ties), ties - 1)]
            return ProfileRunResult(targets=[endpoints[index]])
        ordered = list(zip(scores, range(len(scores)), strict=True))
        self.rng.shuffle(ordered)  # random tie-break: the sort below is stable
        ordered.sort(key=_first, reverse=True)
        return ProfileRunResult(
            targets=[endpoints[i] for _, i in ordered[: self.params.max_num_of_endpoints]]
        )


def _first(item: tuple[float, int]) -> float:
    return item[0]
