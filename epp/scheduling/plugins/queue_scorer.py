"""queue-scorer: prefer endpoints with a shorter waiting queue (GIE semantics).

Score = (max_queue - queue) / (max_queue - min_queue) over the scored endpoints, so the
least-queued endpoint gets 1 and the most-queued 0; equal queues score 1 for everyone.
Reads EndpointMetrics.waiting_queue_size (vllm:num_requests_waiting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._normalize import lower_is_better
from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class QueueScorer(ParameterlessPlugin):
    type_name: ClassVar[str] = "queue-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.waiting_queue_size",)

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        queues = [ep.metrics.waiting_queue_size for ep in endpoints]
        return lower_is_better(queues)
