"""latency-slo-admitter: refuse a sheddable request no pod is predicted to serve within its SLO.

llm-d's `latency-slo-admitter` (pkg/epp/framework/plugins/requestcontrol/admitter/latencyslo)
is an AdmissionPlugin; our scheduler has no admission extension point, so this is a filter
that goes first in the profile and either passes every pod through or refuses the request.
It refuses (429 with `Retry-After: retryAfterS`, code `slo_unattainable`) only when all hold:

- the request is sheddable (priority < 0, from its InferenceObjective);
- it carries an SLO (header or objective default) and the predictor is trained;
- no candidate pod is predicted to meet the SLO, and
- no candidate pod is idle (no request in flight from this EPP): an idle pod serves at once,
  which is the case the predictor knows least (llm-d admits it too).

Requests with priority >= 0 are never refused here: they are routed to the least deficit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.latency.runtime import LatencyRuntime, latency_runtime
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, SchedulingError


@register_plugin
class LatencySLOAdmitter:
    type_name: ClassVar[str] = "latency-slo-admitter"
    consumes: ClassVar[tuple[str, ...]] = ("latency.predictions", "inflight.requests")

    @dataclass(slots=True)
    class Params:
        retry_after_s: int = 1

        def validate(self) -> None:
            if not 0 <= self.retry_after_s <= 3600:
                raise ValueError(f"parameter 'retryAfterS' must be within [0, 3600], got {self.retry_after_s}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.runtime: LatencyRuntime = latency_runtime(ctx.services if ctx is not None else {})

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        if request.priority >= 0:
            return endpoints
        cycle = self.runtime.cycle(state, request, endpoints)
        if cycle is None or cycle.slo.empty:
            return endpoints
        for ep in endpoints:
            if cycle.meets(ep.key) or ep.inflight + ep.peer_inflight == 0:
                return endpoints
        self.runtime.metrics.slo_rejected.inc()
        raise SchedulingError(
            f"request {request.request_id}: no endpoint is predicted to meet its latency SLO and the "
            "request is sheddable; retry later", status=429, code="slo_unattainable",
            retry_after_s=self.params.retry_after_s)
