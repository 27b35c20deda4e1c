"""round-robin-picker: endpoints in rotation, ignoring scores (a control, not a policy).

Envoy's round_robin walks its host list in order; this picker does the same over the
candidate endpoints of each decision (the datastore keeps them in a stable order), so an EPP
configured with it alone makes Envoy round_robin's choices through the whole ext_proc path:
the benchmark's `epp-rr` row, which separates the cost of the extra hop and of the EPP
process from the quality of the scorers' picks (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._picker_common import PickerBase
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, ScoredEndpoint


@register_plugin
class RoundRobinPicker(PickerBase):
    type_name: ClassVar[str] = "round-robin-picker"
    _next: int = 0  # per instance once assigned; the class value is only the start

    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        return self.pick_scores(state, request, [se.endpoint for se in scored], [se.score for se in scored])

    def pick_scores(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint], scores: Sequence[float],
    ) -> ProfileRunResult:
        n = len(endpoints)
        if n == 0:
            return ProfileRunResult(targets=[])
        start = self._next % n
        self._next = start + 1
        k = min(self.params.max_num_of_endpoints, n)
        return ProfileRunResult(targets=[endpoints[(start + i) % n] for i in range(k)])
