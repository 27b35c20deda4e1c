"""concurrency-detector: pool saturation from the EPP's own in-flight load (GIE v1.5
pkg/epp/framework/plugins/flowcontrol/saturationdetector/concurrency).

Saturation = in-flight requests (or tokens, concurrencyMode: tokens) summed over the
endpoints / (endpoints x maxConcurrency (or maxTokenConcurrency)). Unlike scraped metrics
this is exact at the moment of the decision, so a burst cannot overshoot. As a filter it keeps
endpoints below limit * (1 + headroom); it may return none (the request then gets a 503).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from epp.datastore.endpoint import Endpoint
from epp.flowcontrol.interfaces import InflightLoad
from epp.flowcontrol.load import SERVICE_KEY, EndpointInflightLoad
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class ConcurrencyDetector:
    type_name: ClassVar[str] = "concurrency-detector"
    consumes: ClassVar[tuple[str, ...]] = ("inflight.requests", "inflight.tokens")

    @dataclass(slots=True)
    class Params:
        max_concurrency: int = 100
        max_token_concurrency: int = 1_000_000
        concurrency_mode: Literal["requests", "tokens"] = "requests"
        headroom: float = 0.0

        def validate(self) -> None:
            if self.max_concurrency <= 0:
                raise ValueError(f"parameter 'maxConcurrency' must be > 0, got {self.max_concurrency}")
            if self.max_token_concurrency <= 0:
                raise ValueError(f"parameter 'maxTokenConcurrency' must be > 0, got {self.max_token_concurrency}")
            if self.headroom < 0:
                raise ValueError(f"parameter 'headroom' must be >= 0, got {self.headroom}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.params.validate()
        load: InflightLoad | None = ctx.services.get(SERVICE_KEY) if ctx is not None else None
        if load is None:
            load = EndpointInflightLoad()
            if ctx is not None:
                ctx.services[SERVICE_KEY] = load
        self.load = load
        self._tokens = self.params.concurrency_mode == "tokens"
        self._capacity = self.params.max_token_concurrency if self._tokens else self.params.max_concurrency

    def _inflight(self, ep: Endpoint) -> int:
        return self.load.tokens(ep) if self._tokens else self.load.requests(ep)

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        if not endpoints:
            return 1.0
        total = 0
        for ep in endpoints:
            total += self._inflight(ep)
        return total / (self._capacity * len(endpoints))

    def filter(self, state: CycleState, request: LLMRequest,
               endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        limit = int(self._capacity * (1.0 + self.params.headroom))
        return [ep for ep in endpoints if self._inflight(ep) < limit]
