"""assumed-load: count a request against its pod at once, not one scrape later.

Pod metrics arrive every scrape interval (50 ms by default). Until the next scrape, a pod
that was just sent a request still looks as idle as before, so every request of a burst
goes to the same "best" pod and queues there behind the others' prefills (herding). This
PreRequest plugin adds the request to the picked pod's scraped signals in place: one more
waiting request and, when the pod reports its KV-cache size, the blocks the prompt will
take. The next scrape replaces those numbers with the pod's own, so nothing accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult

CHARACTERS_PER_TOKEN = 4


@register_plugin
class AssumedLoad:
    type_name: ClassVar[str] = "assumed-load"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.waiting_queue_size", "metrics.kv_cache_usage",
                                           "metrics.num_gpu_blocks", "metrics.block_size")

    @dataclass(slots=True)
    class Params:
        queue_increment: int = 1
        count_kv_cache: bool = True

        def validate(self) -> None:
            if self.queue_increment < 0:
                raise ValueError(f"parameter 'queueIncrement' must be >= 0, got {self.queue_increment}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        tokens = len(request.prompt_text()) // CHARACTERS_PER_TOKEN + (request.max_tokens or 0)
        for profile_result in result.profile_results.values():
            if profile_result is None or not profile_result.targets:
                continue
            metrics = profile_result.targets[0].metrics
            metrics.waiting_queue_size += self.params.queue_increment
            capacity = metrics.num_gpu_blocks * metrics.block_size
            if self.params.count_kv_cache and capacity > 0:
                metrics.kv_cache_usage = min(1.0, metrics.kv_cache_usage + tokens / capacity)
