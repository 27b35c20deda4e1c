"""running-requests-size-scorer: prefer endpoints with fewer running requests (GIE name).

GIE scores the scraped running count (vllm:num_requests_running), min-max normalised like
queue-scorer. Scrapes lag behind bursts, so this scorer uses max(scraped running count,
Endpoint.inflight): `inflight` is this EPP's live count of requests sent and not yet
completed, which reacts within the same burst; taking the max (not the sum) avoids counting
our own requests twice once the scrape catches up. Set `useInflight: false` for pure GIE
behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins._normalize import lower_is_better
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class RunningRequestsSizeScorer:
    type_name: ClassVar[str] = "running-requests-size-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.running_requests", "inflight")

    @dataclass(slots=True)
    class Params:
        use_inflight: bool = True

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        if self.params.use_inflight:
            loads = [max(ep.metrics.running_requests, ep.inflight + ep.peer_inflight) for ep in endpoints]
        else:
            loads = [ep.metrics.running_requests for ep in endpoints]
        return lower_is_better(loads)
