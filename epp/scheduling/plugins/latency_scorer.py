"""latency-scorer: rank pods by predicted latency headroom against the request's SLO.

llm-d's `latency-scorer` (pkg/epp/framework/plugins/scheduling/scorer/latency): headroom =
SLO - predicted, per TTFT and TPOT, min-max normalised over the candidates and blended with
`ttftWeight` / `tpotWeight` (a dimension whose values are all equal gives its weight to the
other). When some pods meet both targets and others do not, only those that meet them score
above 0. Among pods that meet the SLO, `headroomSelectionStrategy` picks the shape:
`most` (our default) prefers the most headroom, `least` (llm-d's default) the least, packing
requests onto busier pods to keep idle ones for tight SLOs. We default to `most` because the
predictions are ~10-20% off (docs/latency-routing.md): packing onto the boundary turns that
error into SLO misses. Pods that all miss the SLO are ranked by least deficit, i.e. lowest
predicted latency.

Before the predictor is trained, and for requests without SLO (unless the producer's
`scoreRequestsWithoutSLO`), every pod scores 0, so the profile's other scorers decide exactly
as they would without this one (the fallback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from epp.datastore.endpoint import Endpoint
from epp.latency.runtime import LatencyRuntime, latency_runtime
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


def _normalised(values: Sequence[float]) -> list[float] | None:
    """Min-max to [0, 1], higher is better; None when all are equal (no information)."""
    low, high = min(values), max(values)
    span = high - low
    if not span > 0:
        return None
    return [(v - low) / span for v in values]


@register_plugin
class LatencyScorer:
    type_name: ClassVar[str] = "latency-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("latency.predictions",)

    @dataclass(slots=True)
    class Params:
        ttft_weight: float = 0.8
        tpot_weight: float = 0.2
        headroom_selection_strategy: Literal["most", "least"] = "most"

        def validate(self) -> None:
            for label, value in (("ttftWeight", self.ttft_weight), ("tpotWeight", self.tpot_weight)):
                if not value >= 0 or math.isinf(value):
                    raise ValueError(f"parameter {label!r} must be a finite number >= 0, got {value}")
            if self.ttft_weight + self.tpot_weight <= 0:
                raise ValueError("parameters 'ttftWeight' and 'tpotWeight' cannot both be 0")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.runtime: LatencyRuntime = latency_runtime(ctx.services if ctx is not None else {})

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        n = len(endpoints)
        cycle = self.runtime.cycle(state, request, endpoints)
        if cycle is None:
            return [0.0] * n
        headroom = [cycle.headroom(ep.key) for ep in endpoints]
        meets = [t >= 0.0 and p >= 0.0 for t, p in headroom]
        tier = [i for i in range(n) if meets[i]] if any(meets) else list(range(n))
        least = self.params.headroom_selection_strategy == "least" and any(meets)
        preds = [cycle.by_key[endpoints[i].key] for i in tier]
        # Higher is better: -predicted (most headroom / least deficit) or +predicted (least
        # headroom: closest to the SLO from below, all in the tier meet it).
        sign = 1.0 if least else -1.0
        ttft_vals = [sign * p[0] for p in preds]
        tpot_known = all(p[1] == p[1] for p in preds)
        n_ttft = _normalised(ttft_vals)
        n_tpot = _normalised([sign * p[1] for p in preds]) if tpot_known else None
        w_ttft = self.params.ttft_weight if n_ttft is not None else 0.0
        w_tpot = self.params.tpot_weight if n_tpot is not None else 0.0
        out = [0.0] * n
        total = w_ttft + w_tpot
        for j, i in enumerate(tier):
            if total <= 0:
                out[i] = 1.0  # the tier is indistinguishable: all of it scores the same
                continue
            s = 0.0
            if n_ttft is not None:
                s += w_ttft * n_ttft[j]
            if n_tpot is not None:
                s += w_tpot * n_tpot[j]
            out[i] = s / total
        return out
