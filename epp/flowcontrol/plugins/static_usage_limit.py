"""static-usage-limit-policy: one admission ceiling for every priority (llm-d-router
pkg/epp/framework/plugins/flowcontrol/usagelimits, the framework default). `threshold` 1.0
(default) means no gating below saturation; 0.8 keeps 20% of the pool's capacity unused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.registry import PluginContext, register_plugin


@register_plugin
class StaticUsageLimit:
    type_name: ClassVar[str] = "static-usage-limit-policy"

    @dataclass(slots=True)
    class Params:
        threshold: float = 1.0

        def validate(self) -> None:
            if not 0.0 < self.threshold <= 1.0:
                raise ValueError(f"parameter 'threshold' must be in (0.0, 1.0], got {self.threshold}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.params.validate()

    def ceilings(self, priorities: Sequence[int]) -> list[float]:
        return [self.params.threshold] * len(priorities)
