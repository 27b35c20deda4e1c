"""priority-holdback-policy: lower priorities are held back at lower pool saturation, keeping
headroom for higher ones (llm-d-router pkg/epp/framework/plugins/flowcontrol/usagelimits/
priorityholdback; same parameters, defaults and validation).

Ceilings run linearly from `maxCeiling` (highest priority) to `minCeiling` (lowest) over the
priorities the controller knows:
- domain `rank`: equal steps by rank, c_i = max - i * (max - min) / (N - 1);
- domain `value`: proportional to the priority value, c = min + (p - pMin) / (pMax - pMin) * (max - min).
With a single priority, or all priorities equal, every ceiling is `maxCeiling` (work-conserving).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from epp.scheduling.registry import PluginContext, register_plugin


@register_plugin
class PriorityHoldback:
    type_name: ClassVar[str] = "priority-holdback-policy"

    @dataclass(slots=True)
    class Params:
        min_ceiling: float | None = None  # required, no default (as upstream)
        max_ceiling: float = 1.0
        shape: Literal["linear"] = "linear"
        domain: Literal["rank", "value"] = "rank"

        def validate(self) -> None:
            if self.min_ceiling is None:
                raise ValueError("parameter 'minCeiling' is required")
            if not 0.0 <= self.min_ceiling < 1.0:
                raise ValueError(f"parameter 'minCeiling' must be in [0.0, 1.0), got {self.min_ceiling}")
            if not 0.0 < self.max_ceiling <= 1.0:
                raise ValueError(f"parameter 'maxCeiling' must be in (0.0, 1.0], got {self.max_ceiling}")
            if self.min_ceiling >= self.max_ceiling:
                raise ValueError(f"parameter 'minCeiling' ({self.min_ceiling}) must be strictly less than "
                                 f"'maxCeiling' ({self.max_ceiling})")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.params.validate()

    def ceilings(self, priorities: Sequence[int]) -> list[float]:
        hi = self.params.max_ceiling
        lo = self.params.min_ceiling
        assert lo is not None  # validated
        n = len(priorities)
        if n <= 1:
            return [hi] * n
        if self.params.domain == "rank":
            step = (hi - lo) / (n - 1)
            return [hi - i * step for i in range(n)]
        p_max, p_min = priorities[0], priorities[-1]
        if p_max == p_min:
            return [hi] * n
        return [lo + (p - p_min) / (p_max - p_min) * (hi - lo) for p in priorities]
